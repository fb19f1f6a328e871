"""The run's accuracy figure carries what a reader needs: model, legend, chance, interval."""

import matplotlib.pyplot as plt
import pytest
from PIL import Image

from mibench.plots import accuracy_bars, accuracy_figure
from mibench.records import Record
from mibench.scoring import chance_accuracy


def record(task, condition, n_options, sample="s"):
    probs = tuple([1 / n_options] * n_options)
    return Record(task=task, condition=condition, sample_id=sample, probs=probs, prediction=0,
                  gold=0, lure=None)


def test_chance_is_the_mean_of_one_over_the_options_of_clean_samples():
    records = [record("mixed", "clean", 2, "a"), record("mixed", "clean", 4, "b"),
               record("mixed", "black_image", 8, "a"), record("six", "clean", 6)]
    assert chance_accuracy(records) == pytest.approx({"mixed": (1 / 2 + 1 / 4) / 2,
                                                      "six": 1 / 6})


ESTIMATE = {"value": 0.5, "low": 0.4, "high": 0.6, "n": 100, "method": "wilson"}
RESULTS = {"toy_image_heavy": {"clean": {"accuracy": ESTIMATE},
                               "misleading_text": {"accuracy": ESTIMATE}},
           "toy_vqa": {"clean": {"accuracy": ESTIMATE}}}
CHANCE = {"toy_image_heavy": 1 / 6, "toy_vqa": 1 / 8}


def test_accuracy_figure_names_the_model_the_interval_and_chance():
    fig = accuracy_figure(RESULTS, model="toy_llava", chance=CHANCE)
    assert "toy_llava" in fig._suptitle.get_text()
    (legend,) = fig.legends
    labels = [t.get_text() for t in legend.get_texts()]
    assert labels == ["clean", "perturbed", "chance (1/#options)", "95% Wilson interval"]
    for ax, task in zip(fig.axes, RESULTS):
        (line,) = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
        assert line.get_ydata()[0] == pytest.approx(100 * CHANCE[task])
    plt.close(fig)


def test_accuracy_png_is_written(tmp_path):
    path = accuracy_bars(RESULTS, tmp_path / "accuracy.png", model="toy_llava", chance=CHANCE)
    width, height = Image.open(path).size
    assert width > 600 and height > 300
