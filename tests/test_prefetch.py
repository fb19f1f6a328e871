"""The prefetching iterator keeps order, prepares one item ahead and reports failures late."""

import threading

import pytest

from mibench.prefetch import prefetched


def test_yields_every_item_in_order_with_its_preparation():
    assert list(prefetched(lambda x: x * x, range(5))) == [(i, i * i) for i in range(5)]
    assert list(prefetched(lambda x: x, [])) == []


def test_the_next_item_is_prepared_while_the_current_one_is_used():
    started = {1: threading.Event()}

    def prepare(item):
        if item in started:
            started[item].set()
        return item

    for item, _ in prefetched(prepare, [0, 1]):
        if item == 0:  # item 1 is being prepared in the background meanwhile
            assert started[1].wait(timeout=10)


def test_a_failed_preparation_is_raised_when_its_item_is_due():
    def prepare(item):
        if item == 2:
            raise OSError(f"corrupt image in item {item}")
        return item

    used = []
    with pytest.raises(OSError, match="item 2"):
        for item, _ in prefetched(prepare, range(4)):
            used.append(item)
    assert used == [0, 1]


def test_stopping_early_prepares_at_most_one_item_more():
    prepared = []
    for item, _ in prefetched(prepared.append, range(10)):
        if item == 3:
            break
    assert prepared == [0, 1, 2, 3, 4]
