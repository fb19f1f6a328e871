"""What a generating backend returns, and option probabilities from a token's top log-probs.

Shared by every backend that generates (a served model over HTTP, a local model), so the
scorer reads one `Generation` whatever produced it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

# Characters around a letter that some vocabularies keep in the same token ("(A", "A.").
LETTER_TOKEN_TRIM = " \t\n()[]*.:"


@dataclass(frozen=True, slots=True)
class Generation:
    """One sample's generated text.

    `top_logprobs` holds, per generated token, the backend's top alternatives and their
    log-probabilities (None where the backend gives none); `cached` says the response was
    read from a cache rather than generated now.
    """

    text: str
    finish_reason: str | None
    top_logprobs: tuple[Mapping[str, float], ...] | None = None
    cached: bool = False


def letter_probs(top: Mapping[str, float], letters: Sequence[str]) -> np.ndarray:
    """A probability vector over `letters` from one position's top-k log-probabilities.

    A letter's mass is the sum over the listed tokens that are the letter once spaces and
    brackets are trimmed (" B", "B", "(B"). A letter missing from the list shares the mass
    the list leaves out, but gets no more than the least likely listed token (it would be
    listed otherwise). The result is normalised over the letters; with no mass anywhere,
    uniform.
    """
    mass = dict.fromkeys(letters, 0.0)
    listed = 0.0
    for token, logprob in top.items():
        p = math.exp(logprob)
        listed += p
        letter = token.strip(LETTER_TOKEN_TRIM)
        if letter in mass:
            mass[letter] += p
    missing = [letter for letter in letters if mass[letter] == 0.0]
    if missing and top:
        ceiling = math.exp(min(top.values()))
        share = min(ceiling, max(0.0, 1.0 - listed) / len(missing))
        for letter in missing:
            mass[letter] = share
    probs = np.array([mass[letter] for letter in letters], dtype=np.float64)
    total = probs.sum()
    return probs / total if total > 0 else np.full(len(letters), 1.0 / len(letters))
