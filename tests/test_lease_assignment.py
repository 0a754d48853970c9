"""Which leases a worker takes (``core.leases.assign``): lineage first, free before expired, an even share,
and stealing only where two workers differ by two or more leases, so a balanced table never churns."""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.core.leases import SHARD_END, Lease, assign

ARN = "arn:aws:dynamodb:us-east-1:123456789012:table/transcripts/stream/2026-01-01T00:00:00.000"


def _lease(
    shard: str, owner: str | None = None, *, parents: tuple[str, ...] = (), ended: bool = False
) -> Lease:
    return Lease(ARN, shard, "transcripts", parents, owner, "t" if owner else None, 1,
                 SHARD_END if ended else None)  # fmt: skip


def _takes(leases: list[Lease], me: str = "a", **kwargs: object) -> list[tuple[str, str]]:
    options: dict[str, object] = {"held": (), "expired": (), "take_at_most": 10, "max_leases": 100} | kwargs
    plan = assign(leases, me=me, **options)  # type: ignore[arg-type]
    return sorted((t.lease.shard_id, t.transition) for t in plan.takes)


def test_lineage_a_child_waits_for_every_parent_to_end() -> None:
    """A split's children wait for the parent; a merge's child (two parents) waits for both."""
    leases = [
        _lease("parent"),
        _lease("left", parents=("parent",)),
        _lease("right", parents=("parent",)),
        _lease("merged", parents=("left", "other-parent")),
        _lease("other-parent", ended=True),
    ]
    assert _takes(leases) == [("parent", "taken")]
    leases[0] = _lease("parent", ended=True)
    assert _takes(leases) == [("left", "taken"), ("right", "taken")]
    leases[1] = _lease("left", ended=True)
    assert _takes(leases) == [("merged", "taken"), ("right", "taken")]


def test_lineage_a_parent_whose_lease_aged_out_is_finished() -> None:
    """A parent with no lease left (its row expires two days after it ended) does not hold its child."""
    assert _takes([_lease("child", parents=("long-gone",))]) == [("child", "taken")]


def test_lease_free_ones_are_taken_at_once_and_expired_ones_only_when_seen_expired() -> None:
    leases = [_lease("s1"), _lease("s2", "b"), _lease("s3", "c")]
    assert _takes(leases) == [("s1", "taken")]
    assert _takes(leases, expired={(ARN, "s2")}) == [("s1", "taken"), ("s2", "expired")]


def test_lease_a_lease_in_this_workers_name_from_an_earlier_life_is_taken_back_at_once() -> None:
    assert _takes([_lease("s1", "a"), _lease("s2", "b")]) == [("s1", "taken")]
    # Past its first lease period the worker gave it up itself (unrenewable): it waits to expire.
    assert _takes([_lease("s1", "a"), _lease("s2", "b")], reclaim=False) == []


def test_lease_takes_are_bounded_per_pass_and_by_max_leases() -> None:
    leases = [_lease(f"s{n}") for n in range(10)]
    assert len(_takes(leases, take_at_most=3)) == 3
    assert len(_takes(leases, max_leases=2)) == 2
    held = {(ARN, "s0"), (ARN, "s1")}
    mine = [_lease(f"s{n}", "a" if n < 2 else None) for n in range(10)]
    assert _takes(mine, held=held, max_leases=2) == []


def test_lease_stealing_takes_one_from_the_most_loaded_and_stops_when_even() -> None:
    crowded = [_lease(f"s{n}", "b") for n in range(4)]
    assert len(_takes(crowded)) == 1  # one at a time: b holds 4, a none
    assert _takes(crowded)[0][1] == "stolen"
    even = [_lease("s0", "b"), _lease("s1", "b"), _lease("s2", "a"), _lease("s3", "c")]
    held = {(ARN, "s2")}
    assert _takes(even, held=held) == []  # 2, 1, 1: no two differ by two, so nothing moves


def test_lease_nothing_is_stolen_while_free_or_expired_leases_remain() -> None:
    leases = [*(_lease(f"s{n}", "b") for n in range(4)), _lease("free")]
    assert _takes(leases) == [("free", "taken")]


def test_lease_the_view_counts_unleased_shards_and_live_owners() -> None:
    leases = [_lease("s1"), _lease("s2", "b"), _lease("s3", "c"), _lease("s4", parents=("s1",))]
    plan = assign(leases, me="a", held=(), expired={(ARN, "s3")}, take_at_most=0, max_leases=10)
    assert (plan.readable, plan.unleased, plan.owners) == (3, 2, frozenset({"a", "b"}))


@settings(max_examples=60, deadline=None)
@given(shards=st.integers(1, 24), workers=st.integers(1, 6), order=st.randoms(use_true_random=False))
def test_lease_workers_converge_to_an_even_share_and_then_never_churn(
    shards: int, workers: int, order: object
) -> None:
    """Workers passing in any order end with shares that differ by at most one, every shard leased; after
    that, further passes take nothing."""
    names = [f"w{n}" for n in range(workers)]
    table = {f"s{n}": _lease(f"s{n}") for n in range(shards)}

    def one_pass(name: str) -> int:
        rows = list(table.values())
        held = {lease.key for lease in rows if lease.owner == name}
        plan = assign(rows, me=name, held=held, expired=(), take_at_most=2, max_leases=100)
        for take in plan.takes:
            table[take.lease.shard_id] = dataclasses.replace(take.lease, owner=name)
        return len(plan.takes)

    rng = order  # hypothesis' random, for a reproducible pass order
    for _ in range(shards * workers + 10):
        for name in rng.sample(names, len(names)):  # type: ignore[attr-defined]
            one_pass(name)
    counts = [sum(lease.owner == name for lease in table.values()) for name in names]
    assert sum(counts) == shards
    assert max(counts) - min(counts) <= 1
    assert sum(one_pass(name) for name in names) == 0  # stable: no churn


def test_lease_free_and_own_leases_come_before_expired_ones() -> None:
    free = [_lease(f"free{n}") for n in range(3)] + [_lease("own", "a")]
    expired = [_lease(f"expired{n}", "b") for n in range(4)]
    keys = {lease.key for lease in expired}
    taken = _takes(expired + free, expired=keys, take_at_most=4)
    assert taken == sorted((lease.shard_id, "taken") for lease in free)


def test_lease_a_worker_takes_an_even_share_of_the_readable_leases() -> None:
    """Two live owners and four shards: a share of two, although four are there for the taking."""
    leases = [_lease("s0", "b"), _lease("s1"), _lease("s2"), _lease("s3")]
    assert len(_takes(leases)) == 2


def test_lease_unleased_counts_the_free_and_the_expired_but_not_the_live() -> None:
    leases = [_lease("free1"), _lease("free2"), _lease("live", "b"), _lease("x1", "c"), _lease("x2", "d")]
    plan = assign(leases, me="a", held=(), expired={(ARN, "x1"), (ARN, "x2")}, take_at_most=0, max_leases=10)
    assert plan.unleased == 4


def test_lease_workers_starting_together_reach_for_different_leases_first() -> None:
    """Each worker orders the leases its own way, so a fleet starting at once does not race for one lease;
    the same goes for which of a crowded owner's leases each thief takes."""
    free = [_lease(f"s{n}") for n in range(16)]
    firsts = {_takes(free, me=name, take_at_most=1)[0][0] for name in "abcdefgh"}
    assert len(firsts) > 1
    crowded = [_lease(f"s{n}", "z") for n in range(16)]
    stolen = {_takes(crowded, me=name)[0][0] for name in "abcdefgh"}
    assert len(stolen) > 1


def test_lease_a_worker_at_its_share_never_steals_even_from_one_holding_two_more() -> None:
    """10 shards, 4 workers: a share of 3. ``a`` holds 3 and ``b`` 5: the gap is two, but ``a`` has its
    share, so the fix is for ``c`` or ``d`` to steal, not ``a``."""
    owners = ["a"] * 3 + ["b"] * 5 + ["c", "d"]
    leases = [_lease(f"s{n}", owner) for n, owner in enumerate(owners)]
    held = {lease.key for lease in leases if lease.owner == "a"}
    assert _takes(leases, held=held) == []
    [(shard, how)] = _takes(leases, me="c", held={(ARN, "s8")})
    assert ({lease.shard_id: lease.owner for lease in leases}[shard], how) == ("b", "stolen")


def test_lease_exactly_two_more_is_enough_to_steal() -> None:
    assert _takes([_lease("s0", "b"), _lease("s1", "b")]) in ([("s0", "stolen")], [("s1", "stolen")])
    assert _takes([_lease("s0", "b")]) == []  # one more: stealing would only move the gap


def test_lease_the_share_is_capped_by_max_leases_and_nothing_is_taken_from_an_empty_table() -> None:
    plan = assign([], me="a", held=(), expired=(), take_at_most=2, max_leases=5)
    assert (plan.takes, plan.readable, plan.share) == ([], 0, 0)
    plan = assign(
        [_lease(f"s{n}") for n in range(9)], me="a", held=(), expired=(), take_at_most=9, max_leases=5
    )
    assert (len(plan.takes), plan.share) == (5, 5)
