"""Use the compiled build of h11 when it is installed (a dependency of towtruck on the
platforms it ships wheels for).

h11, the HTTP/1.1 state machine under Hypercorn (and httpx), took about a third of the
CPU time of an ``/invoke`` request. ``h11-mypyc`` is the same library compiled with
mypyc, installed under the name ``h11_mypyc``; measured here, it took ``/invoke`` from
about 10,500 to 18,500 requests/s on one process. When it is installed and nothing has
imported ``h11`` yet, it takes h11's place, so that Hypercorn and httpx use it.
``towtruck/__init__.py`` imports this module first.
"""

import sys

if "h11" not in sys.modules:
    try:
        import h11_mypyc
    except ImportError:
        pass
    else:
        sys.modules["h11"] = h11_mypyc

#: Whether h11 is the compiled build.
COMPILED = sys.modules.get("h11", None) is not None and sys.modules["h11"].__name__ == "h11_mypyc"
