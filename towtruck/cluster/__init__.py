"""The cluster: who is a member, where each actor lives, and the call path between
nodes. No I/O of its own but through the peers it is given (see :mod:`towtruck.transport`)."""
