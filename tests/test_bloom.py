import pytest

from towtruck.cluster.bloom import FALSE_POSITIVE_RATE, MIN_CAPACITY, BloomFilter, CountingBloom


def test_no_false_negatives_and_few_false_positives() -> None:
    bloom = CountingBloom(10_000)
    for i in range(10_000):
        bloom.add(f"in{i}")
    snapshot = bloom.snapshot()
    assert all(f"in{i}" in snapshot for i in range(10_000))
    false_positives = sum(f"out{i}" in snapshot for i in range(20_000))
    # Full to its capacity, the filter is at its designed rate (1%), give or take.
    assert false_positives / 20_000 < 1.5 * FALSE_POSITIVE_RATE


def test_removed_ids_leave_the_filter() -> None:
    bloom = CountingBloom()
    for i in range(100):
        bloom.add(f"a{i}")
    for i in range(100):
        bloom.remove(f"a{i}")
    assert bloom.count == 0
    assert not any(f"a{i}" in bloom.snapshot() for i in range(100))


def test_snapshot_round_trips_through_json_payload() -> None:
    bloom = CountingBloom()
    bloom.add("x")
    payload = bloom.snapshot().to_payload()
    again = BloomFilter.from_payload(payload)
    assert "x" in again
    assert (again.count, again.version) == (1, bloom.version)


def test_snapshots_are_cached_until_a_change() -> None:
    bloom = CountingBloom()
    bloom.add("x")
    first = bloom.snapshot()
    assert bloom.snapshot() is first
    bloom.add("y")
    assert bloom.snapshot() is not first


def test_rebuild_when_outgrown() -> None:
    bloom = CountingBloom()
    ids = [f"id{i}" for i in range(MIN_CAPACITY + 1)]
    for actor_id in ids:
        bloom.add(actor_id)
    assert bloom.needs_rebuild()
    bloom.rebuild(ids, len(ids))
    assert not bloom.needs_rebuild()
    assert bloom.capacity == 2 * len(ids)
    assert all(actor_id in bloom.snapshot() for actor_id in ids)


@pytest.mark.parametrize(
    "payload",
    [{}, {"bits": 8, "hashes": 1, "count": 0, "version": 0, "filter": "!!"}, {"bits": "x"}, None],
)
def test_bad_payloads_are_refused(payload: object) -> None:
    with pytest.raises(ValueError, match="not a bloom filter"):
        BloomFilter.from_payload(payload)


def test_a_filter_asking_for_too_many_positions_is_refused() -> None:
    payload = CountingBloom().snapshot().to_payload()
    payload["hashes"] = 10**9  # each test of an id would take a billion steps
    with pytest.raises(ValueError, match="not a bloom filter"):
        BloomFilter.from_payload(payload)
