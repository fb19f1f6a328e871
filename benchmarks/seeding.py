"""Per-sample randomness that is the same in every process, run and machine."""

from __future__ import annotations

import hashlib

import numpy as np


def stable_seed(*keys: object) -> int:
    """A 64-bit seed from a sha256 of the keys (Python's hash() is salted per process)."""
    digest = hashlib.sha256("\x1f".join(map(str, keys)).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def rng_for(*keys: object) -> np.random.Generator:
    """A generator seeded only by the keys, e.g. rng_for(seed, task, condition, sample.id)."""
    return np.random.default_rng(stable_seed(*keys))
