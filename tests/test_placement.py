from collections import Counter

import pytest

from towtruck.cluster import placement

MEMBERS = ["10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080"]


def test_owner_is_the_same_whatever_the_order_of_members() -> None:
    for i in range(200):
        owners = {placement.owner(f"id{i}", members) for members in (MEMBERS, MEMBERS[::-1])}
        assert len(owners) == 1


def test_owner_is_stable_across_processes() -> None:
    # Pinned: a change of hash would move every actor of a running cluster.
    assert placement.score("10.0.0.1:8080", "actor-1") == 0x0CC32868EB4837CE
    assert placement.owner("actor-1", MEMBERS) == "10.0.0.2:8080"


def test_ids_spread_evenly() -> None:
    counts = Counter(placement.owner(f"id{i}", MEMBERS) for i in range(30_000))
    assert set(counts) == set(MEMBERS)
    assert all(9_000 < count < 11_000 for count in counts.values()), counts


def test_a_new_member_takes_ids_only_for_itself() -> None:
    grown = [*MEMBERS, "10.0.0.4:8080"]
    moved = 0
    for i in range(10_000):
        before, after = placement.owner(f"id{i}", MEMBERS), placement.owner(f"id{i}", grown)
        if before != after:
            assert after == "10.0.0.4:8080"
            moved += 1
    assert 2_000 < moved < 3_000  # about a quarter


def test_losing_a_member_moves_only_its_ids() -> None:
    for i in range(2_000):
        before = placement.owner(f"id{i}", MEMBERS)
        after = placement.owner(f"id{i}", MEMBERS[:2])
        assert before == after or before == MEMBERS[2]


def test_no_members() -> None:
    with pytest.raises(ValueError, match="at least one member"):
        placement.owner("x", [])


def test_keys_say_what_owner_says_for_each_key_as_members_change() -> None:
    keys = [f"reminders/{bucket}" for bucket in range(256)]
    remembered = placement.Keys(keys)
    for members in (("a:1",), ("a:1", "b:1", "c:1"), ("a:1", "c:1", "d:1"), ("c:1", "d:1")):
        owned = [remembered.owned(member, members) for member in members]
        for member, positions in zip(members, owned, strict=True):
            assert positions == {
                i for i, key in enumerate(keys) if placement.owner(key, members) == member
            }
        assert set().union(*owned) == set(range(len(keys)))  # every key, once
        assert sum(len(positions) for positions in owned) == len(keys)
    assert remembered.owned("a:1", ("c:1", "d:1")) == frozenset()  # not a member
