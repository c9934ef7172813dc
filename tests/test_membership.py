from towtruck.cluster.membership import Membership, MemberState


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(me: str = "a:1", clock: Clock | None = None) -> Membership:
    return Membership(me, misses_allowed=3, clock=clock or Clock())


def test_down_times_and_forgetting_read_the_given_clock() -> None:
    clock = Clock()
    membership = make(clock=clock)
    membership.add("b:1")
    membership.add("c:1")
    membership.remove("c:1")  # a tombstone, decided at 100
    assert membership.missed("b:1", certain=True)
    clock.now += 7.5
    assert membership.down_for("b:1") == 7.5
    assert membership.expire(after=10) == [], "neither is older than 10 s on this clock"
    clock.now += 5
    assert sorted(membership.expire(after=10)) == ["b:1", "c:1"]
    assert membership.state("b:1") is None
    assert membership.state("c:1") is None


def test_a_node_alone_owns_everything() -> None:
    membership = make()
    assert membership.placement() == ("a:1",)
    assert membership.owner("anything") == "a:1"
    assert membership.state("a:1") is MemberState.SELF


def test_decisions_spread_and_the_newest_wins() -> None:
    a, b = make("a:1"), make("b:1")
    a.add("b:1")
    assert b.merge(a.records())
    assert b.placement() == ("a:1", "b:1")
    assert not b.merge(a.records()), "the same records twice change nothing"
    a.remove("b:1")
    old = [dict(r) for r in b.records()]
    b.merge(a.records())  # b learns it was removed: it forgets its peers
    assert b.placement() == ("b:1",)
    assert b.peers() == []
    a.merge(old)  # stale gossip cannot undo the removal
    assert a.state("b:1") is MemberState.REMOVED
    a.add("b:1")
    assert a.state("b:1") is MemberState.ALIVE


def test_liveness_is_local_and_comes_back() -> None:
    membership = make()
    membership.merge([{"address": "b:1", "joined": True, "version": 1}])
    assert not membership.missed("b:1")
    assert not membership.missed("b:1")
    assert membership.missed("b:1"), "the third miss takes it out"
    assert membership.state("b:1") is MemberState.DOWN
    assert membership.placement() == ("a:1",)
    assert membership.peers() == ["b:1"], "still pinged"
    assert membership.heard_from("b:1")
    assert membership.placement() == ("a:1", "b:1")
    assert membership.missed("b:1", certain=True)


def test_malformed_records_are_skipped() -> None:
    membership = make()
    assert not membership.merge([{"address": "b:1"}, "junk", {"joined": True}])
    assert membership.peers() == []


def test_versions_move_past_every_version_seen() -> None:
    membership = make()
    far_future = 2**62  # far ahead of any clock, still a version a node may send
    membership.merge([{"address": "b:1", "joined": False, "version": far_future}])
    membership.add("b:1")
    assert membership.state("b:1") is MemberState.ALIVE


def test_records_that_could_break_a_node_are_skipped() -> None:
    membership = make()
    assert not membership.merge(
        [
            {"address": "x:abc", "joined": True, "version": 1},  # not an address
            {"address": "b:1", "joined": True, "version": 10**30},  # past 64 bits
            {"address": "b:1", "joined": "yes", "version": 1},
            {"address": "b:1", "joined": True, "version": 1.5},
        ]
    )
    assert membership.peers() == []


def test_a_batch_that_removes_this_node_removes_it_in_any_order() -> None:
    a, bs = make("a:1"), [make("b:1"), make("b:1")]
    a.add("b:1")
    a.add("c:1")
    for b in bs:
        b.merge(a.records())
    a.remove("b:1")
    records = a.records()
    for removed, batch in zip(bs, (records, records[::-1]), strict=True):
        assert removed.peers() == ["a:1", "c:1"]
        assert removed.merge(batch)
        assert removed.peers() == [], "it serves on its own, whatever came first"
        assert removed.placement() == ("b:1",)


def test_a_node_cannot_announce_itself_back_once_removed_unless_restarted() -> None:
    a, b = make("a:1"), make("b:1")
    a.merge(b.records())
    a.remove("b:1")
    removal = a.records()
    b.merge(removal)
    (own,) = (r for r in b.records() if r["address"] == "b:1")
    again = {**own, "joined": True, "version": own["version"] + 10, "by": "b:1"}
    assert not a.merge([again]), "its own word cannot undo its removal"
    assert a.state("b:1") is MemberState.REMOVED
    restarted = make("b:1")  # a new process: a later born
    assert a.merge(restarted.records())
    assert a.state("b:1") is MemberState.ALIVE
    a.remove("b:1")
    a.add("b:1")  # another node's decision brings it back too
    assert a.state("b:1") is MemberState.ALIVE


def test_a_version_moved_on_alone_changes_no_placement() -> None:
    a, b = make("a:1"), make("b:1")
    assert a.merge(b.records())
    (own,) = (r for r in b.records() if r["address"] == "b:1")
    for bump in range(1, 4):
        assert not a.merge([{**own, "version": own["version"] + bump}])
    assert a.placement() == ("a:1", "b:1")
    assert {"address": "b:1", "version": own["version"] + 3}.items() <= next(
        r for r in a.records() if r["address"] == "b:1"
    ).items(), "the newest version is kept, to gossip on"


def test_a_removed_node_takes_in_no_gossip_until_it_is_added_back() -> None:
    a, b = make("a:1"), make("b:1")
    a.add("b:1")
    a.add("c:1")
    b.merge(a.records())
    a.remove("b:1")
    b.merge(a.records())
    assert b.peers() == []
    # The same records again (the answer to a heartbeat sent before the removal, say):
    # its own is no news, and the others must not bring its peers back.
    assert not b.merge(a.records())
    assert b.peers() == []
    a.add("b:1")
    assert b.merge(a.records())
    assert b.peers() == ["a:1", "c:1"]
