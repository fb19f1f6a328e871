import pytest

from mibench.records import Record, Sample, SampleError


def test_answer_out_of_range_names_the_sample():
    with pytest.raises(SampleError, match=r"'q-7'.*answer index 3.*\['a', 'b'\]"):
        Sample(id="q-7", question="?", options=("a", "b"), answer=3, category="vqa")


def test_unknown_category_names_the_sample():
    with pytest.raises(SampleError, match="q-1.*category"):
        Sample(id="q-1", question="?", options=("a", "b"), answer=0, category="audio")


def test_record_round_trips_through_json():
    record = Record("t", "clean", "s1", (0.25, 0.75), 1, 1, lure=0)
    assert Record.from_json(record.to_json()) == record
    assert record.to_json()["correct"] is True
