"""A factory module that the ``--workers`` supervisor imports but its workers cannot,
for the start-up error tests: a worker that refuses to start with one line of error
(as one whose peers refuse its cluster key does) stops the supervisor, which adds
nothing to that line."""

import sys

if "--listen-fds" in sys.argv:  # only the workers are started with it
    raise ImportError("refused in the workers")


def create_actor(id: str, client: object) -> dict[str, object]:
    return {}
