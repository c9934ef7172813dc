"""The body-size limit, applied the same way on every HTTP path: towtruck's own server
(both parsers), the fast paths under Hypercorn and the Quart-Trio routes. (The
cluster key has one check too: :func:`towtruck.cluster.credentials.check_cluster_key`.)"""

from __future__ import annotations

from ..errors import PayloadTooLarge

__all__ = ["body_too_large"]


def body_too_large(size: int, max_body: int, *, declared: bool) -> PayloadTooLarge | None:
    """The error for a body of ``size`` bytes, if that is over ``max_body``; None if not.

    ``declared``: ``size`` is what ``content-length`` announced (the body is refused
    before it is read); otherwise it is what has been read so far.
    """
    if size <= max_body:
        return None
    if declared:
        return PayloadTooLarge(
            f"the body is {size} bytes; max_body is {max_body}", max_body=max_body
        )
    return PayloadTooLarge(f"the body is over max_body ({max_body} bytes)", max_body=max_body)
