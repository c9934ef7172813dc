"""The failure detector's own health: how late this node's timers fire.

A node whose event loop runs late (a CPU shared with busier processes, an actor's turn
that blocks, a pause of the whole process) reads its peers' answers late, and would
take them for down when it is itself the slow one. Each timer of the failure detector
says how late it fired before the detector acts on it: a late one raises a score, a
heartbeat round on time lowers it by one, and the detector's timeouts (a probe's, a
suspicion's) are multiplied by ``1 + score``. This is Lifeguard's local health
awareness (HashiCorp's memberlist), measured on the event loop itself; Orleans' silos
likewise stop voting others dead while their own health checks fail.
"""

from __future__ import annotations

#: The most the detector's timeouts are multiplied by (memberlist's default).
MOST = 9


class LocalHealth:
    """This node's health score, from the lateness of its failure detector's timers.

    Args:
        interval: the heartbeat interval; a timer later than a quarter of it is late.
    """

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._tolerance = interval / 4
        #: 0 when the timers fire on time; up to ``MOST - 1`` while they run late.
        self.score = 0
        #: How many of the timers fired late (a figure for ``/metrics``).
        self.late = 0

    @property
    def multiplier(self) -> int:
        """What the detector's timeouts are multiplied by now."""
        return 1 + self.score

    def fired(self, late: float, *, round_: bool = False) -> None:
        """A timer fired ``late`` seconds after it was due; ``round_``: the heartbeat
        round's timer, which lowers the score when it is on time."""
        if late > self._tolerance:
            self.late += 1
            self.score = min(MOST - 1, self.score + 1 + int(late / self._interval))
        elif round_ and self.score:
            self.score -= 1
