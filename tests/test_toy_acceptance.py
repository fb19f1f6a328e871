"""The shipped toy model must keep showing what the README promises (on 200 samples a task)."""

from hydra import compose, initialize_config_module

from mibench.cli import run


def test_shipped_toy_model_shows_modality_interference(tmp_path):
    overrides = ["grid.tasks.toy_image_heavy.n=200", "grid.tasks.toy_text_heavy.n=200",
                 "grid.tasks.toy_vqa.n=20", f"out_dir={tmp_path}", "progress=false"]
    with initialize_config_module("mibench.conf", version_base="1.3"):
        document = run(compose("config", overrides=overrides))
    ih, th = document["results"]["toy_image_heavy"], document["results"]["toy_text_heavy"]
    assert ih["clean"]["accuracy"]["value"] >= 0.90
    assert th["clean"]["accuracy"]["value"] >= 0.90
    assert ih["misleading_text"]["drop"]["value"] >= 0.20
    assert th["switched_image"]["drop"]["value"] >= 0.10
    assert ih["unrelated_text"]["drop"]["value"] < ih["misleading_text"]["drop"]["value"]
    for blank in ("black_image", "white_image"):
        assert th[blank]["drop"]["value"] < th["switched_image"]["drop"]["value"]
    # the misleading caption pulls answers to the option it names, not just anywhere
    assert ih["misleading_text"]["lure_rate"]["value"] >= 0.5
