"""A pytest plugin that has every server read HTTP with h11, the fallback where
httptools does not install: ``pytest -p tests.h11_parser`` runs the suite on it (in
this process, and in the ``towtruck serve`` processes tests start). Tests marked
``parser_free`` ran on httptools already and are left out: their subject is not how a
server reads HTTP (the stores' and tables' contracts, the manifests, the simulation,
failure detection, state through kills, hosts finding each other, the churn tests,
refusals at start, signals, the dashboard page's script, App under Hypercorn, which
reads the requests itself), and what they do over HTTP other tests do on both parsers."""

import os

import pytest

import towtruck.server.parser

towtruck.server.parser.BACKEND = "h11"
os.environ["TOWTRUCK_HTTP_PARSER"] = "h11"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    left = [item for item in items if item.get_closest_marker("parser_free") is not None]
    if left:
        config.hook.pytest_deselected(items=left)
        items[:] = [item for item in items if item.get_closest_marker("parser_free") is None]
