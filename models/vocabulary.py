"""Does a checkpoint's tokenizer cover a task's text? The share of words it maps to `<unk>`.

A tokenizer without byte fallback turns every word it cannot spell into its unknown token;
a model shown "A. <unk>  B. <unk>" scores below chance without any error. Measuring the share
of such words on a few of the task's prompts lets the suite warn, or refuse, before scoring.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from mibench.prompts import format_prompt
from mibench.records import Sample

PROBE_SAMPLES = 16  # prompts measured per task, spread over it
WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class Coverage:
    """How many words of some prompts the tokenizer maps to its unknown token."""

    prompts: int
    words: int
    unknown: int
    examples: tuple[str, ...]  # the unknown words, most frequent first (at most 5)

    @property
    def share(self) -> float:
        return self.unknown / self.words if self.words else 0.0


def probe_samples(samples: Sequence[Sample], n: int = PROBE_SAMPLES) -> list[Sample]:
    """`n` samples spread evenly over the task, always the same ones for the same task."""
    step = max(1, len(samples) // n)
    return list(samples[::step][:n])


def coverage(tokenizer, samples: Sequence[Sample]) -> Coverage | None:
    """The unknown-word share of the samples' prompts (question block, options and instruction
    as `format_prompt` writes them); None where the tokenizer has no unknown token."""
    unk = tokenizer.unk_token_id
    if unk is None:
        return None
    counts = Counter(w for s in samples for w in WORD.findall(format_prompt(s)))
    if not counts:
        return Coverage(len(samples), 0, 0, ())
    words = list(counts)
    # each word alone and after a space, as it appears mid-sentence (sentencepiece "▁word")
    ids = tokenizer([" " + w for w in words], add_special_tokens=False).input_ids
    unknown = Counter({w: counts[w] for w, row in zip(words, ids, strict=True) if unk in row})
    return Coverage(prompts=len(samples), words=sum(counts.values()),
                    unknown=sum(unknown.values()),
                    examples=tuple(w for w, _ in unknown.most_common(5)))
