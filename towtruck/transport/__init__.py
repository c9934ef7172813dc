"""Talking to peers: lanes (framed calls over one connection) and HTTP, and the
socket helpers both ends use."""
