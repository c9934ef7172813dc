"""A pytest plugin that imports the pure-Python h11 before towtruck can put the compiled
one in its place: ``pytest -p tests.pure_h11`` runs the suite on it."""

import h11  # noqa: F401
