"""Task runner; the sessions mirror CI (``.ci/run``)."""

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.default_venv_backend = "venv"


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite with the servers reading HTTP with httptools, then with h11,
    the fallback where httptools does not install (``-- -k pattern`` and other pytest
    options pass through)."""
    session.install("-e", ".[test]")
    # ``python -m`` puts the repository on sys.path, where ``-p tests.h11_parser`` is.
    session.run("python", "-m", "pytest", *session.posargs)
    session.run("python", "-m", "pytest", "-p", "tests.h11_parser", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the package."""
    session.install("-e", ".[test]", "mypy>=1.10")
    session.run("mypy")


@nox.session
def bench(session: nox.Session) -> None:
    """Run the benchmarks and print a table (``-- --quick`` for a smoke run)."""
    session.install("-e", ".[bench]")
    session.run("python", "benchmarks/run.py", *session.posargs)
