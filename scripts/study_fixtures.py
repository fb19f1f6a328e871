"""Fixture files in the layout of the reference study's release, for tests and the dry run.

Nothing here is the study's: the texts are the suite's own (words of the embedded toy's
shapes world), written in the *formats* the study's code and data use, so the real readers
(mibench.study_release, tasks/study_data.py) are exercised offline:

- `write_release(root)`: Python and YAML files at the paths the study's code has, with the
  same structure (a module-level `qa_image_prompt` string; a function of sentence lists
  concatenated into `all_facts` and drawn `[... for _ in range(N)]`; a retry suffix appended
  with `+=` in `model_predict_and_extract`; generation settings in `args_*.yaml`).
- `write_data(root)`: the study's data tree (`caltech-101/multiple_choice_data_test.json`,
  ..., `VQADatasets/MMVP/images/`) with items in its JSON schema, made from shapes-world
  samples (so the toy model can answer them); `archives=True` packs each top folder into
  `<folder>.tar.gz` instead, as the hub release ships them.

    python scripts/study_fixtures.py OUT_DIR [--items N] [--archives]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import shutil
import tarfile
import textwrap
from pathlib import Path

FIXTURE_SYSTEM = "You answer questions about shapes and colours. Give the option letter."
FIXTURE_SUFFIX = "\nAnswer with one letter."
# A prompt format for models without a chat template (the study's `blip_visual_format`).
FIXTURE_PLAIN_FORMAT = "{system_prompt}\n{user_input} Reply: "
# Fixture sentences (two lists, as the study's pool concatenates several), in toy words.
FIXTURE_SENTENCES = (
    ("Anna has a red ball.", "Max has a blue box.", "Lena has a green kite."),
    ("Tom has a purple tent.", "Mia has a cyan sign."),
)
FIXTURE_DRAWS = 4
FIXTURE_SETTINGS = {"max_new_tokens": 10, "top_p": 0.95, "repetition_penalty": 1.2,
                    "temperature": 0.0, "length_penalty": 1.0, "sampling_times": 1,
                    "retry_thres": 2, "device": "cuda"}
INFERENCE_CONFIGS = ("image_heavy/args_caltech101.yaml", "image_heavy/args_miniImageNet.yaml",
                     "text_heavy/args_mmlu.yaml", "text_heavy/args_openbookqa.yaml",
                     "VQA/args_mmbench.yaml", "VQA/args_scienceqa.yaml",
                     "VQA/args_seedbench.yaml")


def write_release(root: Path, system: str = FIXTURE_SYSTEM) -> Path:
    """Fixture source files at the study's paths, in its code's structure."""
    prompt = root / "modules" / "prompt"
    prompt.mkdir(parents=True, exist_ok=True)
    (prompt / "__init__.py").write_text(
        "from .text_interfere import *\n\n"
        'llava_visual_format = """{system_prompt}\\nUSER: <image>\\n{user_input}\\nASSISTANT:"""\n'
        f"blip_visual_format = {json.dumps(FIXTURE_PLAIN_FORMAT)}\n"
        f'qa_prompt = """{system} No explanation."""\n'
        f'qa_image_prompt = """{system}"""\n')
    lists = "".join(f"    facts_{i} = [\n" + "".join(f"        {json.dumps(s)},\n" for s in group)
                    + "    ]\n" for i, group in enumerate(FIXTURE_SENTENCES))
    names = " + ".join(f"facts_{i}" for i in range(len(FIXTURE_SENTENCES)))
    (prompt / "text_interfere.py").write_text(
        "import random\n\n\n"
        "def generate_unrelated_distraction_prompts():\n"
        '    """sentences with no bearing on the image"""\n'
        f"{lists}\n"
        "    def combine_distractions():\n"
        f"        all_facts = ({names})\n"
        "        return random.choice(all_facts)\n\n"
        f"    sentences = [combine_distractions() for _ in range({FIXTURE_DRAWS})]\n"
        '    paragraph = " ".join(sentences)\n'
        "    return paragraph\n")
    utils = root / "modules" / "utils"
    utils.mkdir(parents=True, exist_ok=True)
    (utils / "model_utils.py").write_text(textwrap.dedent(f"""\
        def model_predict_and_extract(args, data_ids, contexts, model, dataset_nickname):
            results = {{}}
            for retry in range(args.retry_thres):
                for context in contexts:
                    context["text"] += {json.dumps(FIXTURE_SUFFIX)}
            return results
        """))
    for name in INFERENCE_CONFIGS:
        path = root / "configs" / "model_inference" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{k} : {json.dumps(v)}\n" for k, v in FIXTURE_SETTINGS.items()))
    return root


# -- the data tree -----------------------------------------------------------------------------
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
# (folder, JSON file, shapes kind, image folder or "base64" or None)
DATASETS = (
    ("mini-imagenet", "mini-imagenet/multiple_choice_data_test.json", "image_heavy",
     "mini-imagenet/images"),
    ("caltech-101", "caltech-101/multiple_choice_data_test.json", "image_heavy",
     "caltech-101/images"),
    ("MMLU", "MMLU/multiple_choice_data_test.json", "text_heavy", None),
    ("OpenBookQA", "OpenBookQA/multiple_choice_data_test.json", "text_heavy", None),
    ("VQADatasets", "VQADatasets/ScienceQA/multiple_choice_data_test.json", "vqa",
     "VQADatasets/ScienceQA/images"),
    ("SEED-Bench-Img", "SEED-Bench-Img/multiple_choice_data.json", "vqa", "SEED-Bench-Img"),
    ("MMBench-EN", "MMBench-EN/multiple_choice_data.json", "vqa", "base64"),
)
MMVP_FOLDER = "VQADatasets/MMVP/images"


def item(sample, index: int, dataset: str, images: str | None, root: Path) -> dict:
    """One shapes-world sample as an item of the study's JSON schema."""
    letters = LETTERS[: len(sample.options)]
    row = {"id": f"{dataset}-{index}", "question": sample.question,
           "multiple_choices": dict(zip(letters, sample.options)),
           "multiple_choices_answer": letters[sample.answer]}
    if images == "base64":
        buffer = io.BytesIO()
        sample.image.save(buffer, format="PNG")
        row["image"] = base64.b64encode(buffer.getvalue()).decode()
    elif images:
        name = f"{index:04d}.png"
        (root / images).mkdir(parents=True, exist_ok=True)
        sample.image.save(root / images / name)
        row["image"] = name
    if sample.category == "image_heavy":
        wrong = sample.options[(sample.answer + 1) % len(sample.options)]
        row["facts"] = {wrong: f"The picture seems to describe a {wrong}. Anna has a {wrong}. "
                               f"Max has a {wrong}."}
    return row


def write_pool(root: Path, n: int = 5) -> Path:
    """`n` images under the study's switched-image folder, in nested folders and with
    mixed-case suffixes, as a real pool may have them."""
    import numpy as np

    from mibench.tasks.shapes import render_shape

    rng = np.random.default_rng(7)
    for i in range(n):
        path = root / MMVP_FOLDER / f"set{i % 2}" / f"{i + 1}.{'JPG' if i % 3 == 0 else 'png'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        render_shape(("circle", "square", "triangle")[i % 3], "red", rng).save(
            path, format="JPEG" if i % 3 == 0 else "PNG")
    return root


def write_data(root: Path, items: int = 12, archives: bool = False, mmvp: int = 5) -> Path:
    """The study's data tree under `root` (see module doc); `root` is returned."""
    from mibench.tasks.shapes import make_sample

    staging = root / ".staging" if archives else root
    for n, (folder, file, kind, images) in enumerate(DATASETS):
        rows = [item(make_sample(kind, i, seed=100 + n), i, folder.lower(), images, staging)
                for i in range(items)]
        (staging / file).parent.mkdir(parents=True, exist_ok=True)
        (staging / file).write_text(json.dumps(rows, indent=1))
    write_pool(staging, mmvp)
    if archives:
        for top in sorted(p for p in staging.iterdir() if p.is_dir()):
            with tarfile.open(root / f"{top.name}.tar.gz", "w:gz") as tar:
                tar.add(top, arcname=top.name)
        shutil.rmtree(staging)
    return root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="folder to write: OUT/study_code and OUT/study_data")
    parser.add_argument("--items", type=int, default=12, help="items per dataset")
    parser.add_argument("--archives", action="store_true", help="pack the data as tar.gz")
    args = parser.parse_args(argv)
    out = Path(args.out)
    write_release(out / "study_code")
    write_data(out / "study_data", args.items, args.archives)
    print(f"release-format fixtures in {out}/study_code and {out}/study_data")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
