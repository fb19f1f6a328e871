"""Seeded stratified subsampling: a quick run that keeps the label mix of the full split.

Generic over tasks: it needs only each item's stratum (its answer or class label) and a stable
key (its sample id). Within a stratum items are ordered by a sha256 of (seed, key), so the
chosen subset is the same in every process and on every machine, and does not depend on the
order the dataset happens to list its rows in.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

from mibench.seeding import stable_seed


def allocate(sizes: Sequence[int], limit: int) -> list[int]:
    """Per-stratum quotas summing to min(limit, total), proportional to the stratum sizes.

    Largest-remainder rounding; ties go to the earlier stratum. Every stratum gets at most
    its size.
    """
    total = sum(sizes)
    if limit >= total:
        return list(sizes)
    exact = [limit * s / total for s in sizes]
    quotas = [int(e) for e in exact]
    order = sorted(range(len(sizes)), key=lambda i: (-(exact[i] - quotas[i]), i))
    for i in order[: limit - sum(quotas)]:
        quotas[i] += 1
    return quotas


def stratified_indices(strata: Sequence[Hashable], keys: Sequence[str], limit: int | None,
                       seed: int = 0) -> list[int]:
    """Indices of a seeded stratified subset of at most `limit` items, in their original order.

    `strata[i]` is item i's stratum, `keys[i]` its stable id. `limit=None` keeps everything.
    """
    if len(strata) != len(keys):
        raise ValueError(f"{len(strata)} strata for {len(keys)} keys")
    if limit is None or limit >= len(keys):
        return list(range(len(keys)))
    if limit < 1:
        raise ValueError(f"limit={limit} must be at least 1 (or null for the full split)")
    groups: dict[str, list[int]] = {}
    for i, stratum in enumerate(strata):
        groups.setdefault(repr(stratum), []).append(i)
    names = sorted(groups)  # stable order of strata, whatever the row order
    quotas = allocate([len(groups[n]) for n in names], limit)
    chosen: list[int] = []
    for name, quota in zip(names, quotas):
        ranked = sorted(groups[name], key=lambda i: (stable_seed("limit", seed, keys[i]), keys[i]))
        chosen.extend(ranked[:quota])
    return sorted(chosen)
