"""A pytest plugin that has every server read HTTP with h11, the fallback where
httptools does not install: ``pytest -p tests.h11_parser`` runs the suite on it (in
this process, and in the ``towtruck serve`` processes tests start)."""

import os

import towtruck.server.parser

towtruck.server.parser.BACKEND = "h11"
os.environ["TOWTRUCK_HTTP_PARSER"] = "h11"
