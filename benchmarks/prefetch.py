"""Overlap a batch's host-side preparation with the previous batch's forward pass."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

Item = TypeVar("Item")
Prepared = TypeVar("Prepared")


def prefetched(prepare: Callable[[Item], Prepared], items: Iterable[Item]
               ) -> Iterator[tuple[Item, Prepared]]:
    """Yield `(item, prepare(item))` in order, preparing the next item in a background thread.

    While the caller works on item i (a forward pass, which releases the GIL), item i+1 is
    prepared (prompts rendered, tokens and pixels made). At most one item is prepared ahead,
    so memory stays at two batches. An error in `prepare` is raised when its item is due;
    the items before it have been yielded (and their results stored) by then.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="mibench-prefetch") as pool:
        upcoming: tuple[Item, Future[Prepared]] | None = None
        try:
            for item in items:
                submitted = (item, pool.submit(prepare, item))
                if upcoming is not None:
                    yield upcoming[0], upcoming[1].result()
                upcoming = submitted
            if upcoming is not None:
                yield upcoming[0], upcoming[1].result()
        finally:  # the caller stopped early or failed: drop the batch prepared ahead
            if upcoming is not None:
                upcoming[1].cancel()
