"""Every offline `mibench` command of the README runs, as written, in a fresh directory.

The commands are read from the README's fenced bash blocks, so an example cannot drift from
the code unnoticed. Each runs as its own subprocess with the README's text, plus small-n
overrides appended to benchmark runs, and placeholders (`outputs/<run>`, `DIR`) replaced by
what earlier commands produced. A command is skipped only by a rule below that says why; a
`mibench` line that no rule covers and that still holds a placeholder fails the test.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
TOY_CHECKPOINT = ROOT / "models" / "toy_llava"

N = 8  # samples per task: enough for every metric, compare, submit and validate to run
GRID_N = [f"grid.tasks.{task}.n={N}" for task in ("toy_image_heavy", "toy_text_heavy",
                                                  "toy_vqa")]
TASK_N = [f"task.n={N}"]

# Why a README command is not run here (first matching rule wins).
SKIP_RULES: tuple[tuple[str, str], ...] = (
    (r"^pip install -e \S*\[slurm\]", "the SLURM launcher's optional extra"),
    (r"^pip install", "the install: .ci/run runs it (test_ci_installs_as_the_readme_says)"),
    (r"-m pytest", "the test suite itself"),
    (r"^accelerate launch", "several processes: tests/test_distributed.py runs them"),
    (r"^mibench-train", "minutes of training: tests/test_train.py runs the trainer"),
    (r"^python scripts/", "benchmark and sweep scripts take minutes; not part of the CLI"),
    (r"^scripts/reproduce_cai2025\.sh", "the GPU recipe; tests/test_official.py runs its "
                                         "--dry-run on the toy"),
    (r"hydra/launcher=slurm", "needs a SLURM cluster"),
    (r"benchmark=cai2025", "the study's datasets come from the hub (tests/test_datasets.py "
                          "loads local fixtures of each)"),
    (r"logger\.mode=online", "needs W&B over the network (offline mode: tests/test_cli.py)"),
    (r"facts\.model=", "a fact-writing LLM from the hub"),
    (r"model\.path=(?![/.])\S*/", "a checkpoint from the hub"),
    (r"^export \w+=", "sets a variable (an API key) for the commands after it"),
    (r"^vllm serve", "serves a model on GPUs; tests/test_openai_runs.py serves the toy with "
                     "transformers serve"),
    (r"model=openai\b", "a served model: tests/test_openai_runs.py runs model=openai against "
                        "transformers serve on 127.0.0.1"),
    (r"model=(?!hf\b|toy_llava\b|toy_llava_mitigated\b)\w+", "a checkpoint from the hub"),
)


def readme_blocks(text: str) -> list[list[str]]:
    """The commands of each of the README's ```bash blocks: continuations joined, `&&` split."""
    blocks = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL):
        commands = []
        for line in block.replace("\\\n", " ").splitlines():
            code = " ".join(shlex.split(line, comments=True))  # drops "# ..." comments
            commands += [part.strip() for part in code.split(" && ") if part.strip()]
        blocks.append(commands)
    return blocks


def readme_commands(text: str) -> list[str]:
    return [command for block in readme_blocks(text) for command in block]


def readme_argv(command: str) -> list[str]:
    """The command's arguments, its optional parts (`[--out DIR]`) given."""
    return shlex.split(re.sub(r"\[([^\]]*)\]", r"\1", command))


def skip_reason(command: str) -> str | None:
    for pattern, reason in SKIP_RULES:
        if re.search(pattern, command):
            return reason
    return None


def is_benchmark_run(argv: list[str]) -> bool:
    from mibench.cli import SUBCOMMANDS

    return argv[0] == "mibench" and (len(argv) == 1 or argv[1] not in SUBCOMMANDS)


def small(argv: list[str]) -> list[str]:
    """A benchmark command with few samples per task (the README's own values come first,
    Hydra keeps the last)."""
    return argv + (TASK_N if any(a.startswith("task=") for a in argv) else GRID_N)


def substitute(argv: list[str], values: dict[str, object]) -> list[str]:
    """Placeholders replaced, as whole arguments or as the value of a `key=value` override."""
    out = []
    for arg in argv:
        key, eq, value = arg.rpartition("=")
        out.append(str(values[arg]) if arg in values else
                   f"{key}={values[value]}" if eq and value in values else arg)
    return out


def run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}  # 8 samples: no use for threads
    assert argv[0] == "mibench"
    return subprocess.run([sys.executable, "-m", "mibench.cli", *argv[1:]], cwd=cwd,
                          capture_output=True, text=True, env=env, timeout=600)


def test_readme_commands_run_offline(tmp_path):
    commands = readme_commands(README.read_text())
    assert sum(c.split()[0] == "mibench" for c in commands) >= 15, "README blocks not found"
    # a repeated command would only re-read its run
    runnable = [readme_argv(c) for c in dict.fromkeys(commands)
                if c.split()[0] == "mibench" and skip_reason(c) is None]

    # the benchmark runs first, two at a time (each is mostly imports, on one core); the
    # subcommands then read what they wrote
    benchmark_runs = [argv for argv in runnable if is_benchmark_run(argv)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        outs = pool.map(lambda argv: run(small(substitute(
            argv, {"/data/ckpt/my-finetune": TOY_CHECKPOINT})), tmp_path), benchmark_runs)
    runs: dict[str, Path] = {}
    for argv, out in zip(benchmark_runs, outs):
        command = shlex.join(argv)
        assert out.returncode == 0, f"README command failed: {command}\n{out.stderr[-3000:]}"
        assert "| task | condition | n | accuracy % |" in out.stdout, command
        assert "\x1b[" not in out.stderr and "\r" not in out.stderr, \
            f"cursor codes in a log: {command}"
        (where,) = re.findall(r"records, metrics and table in (\S+) ", out.stdout)
        runs[command] = Path(where)
    a, b = runs.get("mibench"), runs.get("mibench model=toy_llava_mitigated")
    assert a and b, "the README's default run and the mitigated model's feed compare and submit"

    lure_run = runs.get("mibench task=toy_text_heavy perturbation=inverted_lure")
    assert lure_run, "the README's inverted_lure run feeds `mibench lures`"
    # runs/llava7b(-ft) are cai2025 runs of hub checkpoints: the two toy runs stand in
    values = {"outputs/<run>": a, "outputs/<run_a>": a, "outputs/<run_b>": b,
              "outputs/<lure_run>": lure_run,
              "runs/llava7b": a, "runs/llava7b-ft": b, "DIR": tmp_path / "submission",
              "DIR/submission.json": tmp_path / "submission" / "submission.json",
              "NAME": "readme_example"}

    def run_block(block: list[list[str]]) -> list[tuple[str, subprocess.CompletedProcess]]:
        """A block's subcommands in order (validate reads what submit wrote); stops at a
        failure."""
        done = []
        for argv in block:
            command = shlex.join(argv)
            argv = substitute(argv, values)
            if argv[:2] == ["mibench", "diagnose"] and "--across" not in argv:
                argv = argv + ["--limit", str(N)]  # activations of a few samples per task
            left = [arg for arg in argv if "<" in arg or "..." in arg]
            assert not left, f"README command {command!r}: no value for {left}; add one here"
            done.append((command, run(argv, tmp_path)))
            if done[-1][1].returncode:
                break
        return done

    blocks = [[argv for argv in map(readme_argv, block) if argv in runnable
               and not is_benchmark_run(argv)] for block in readme_blocks(README.read_text())]
    with ThreadPoolExecutor(max_workers=2) as pool:  # the blocks are independent
        for done in pool.map(run_block, [block for block in blocks if block]):
            for command, out in done:
                assert out.returncode == 0, \
                    f"README command failed: {command}\n{out.stderr[-3000:]}"
    assert (tmp_path / "results" / "submissions" / "readme_example" / "submission.json").exists()
    assert (tmp_path / "results" / "LEADERBOARD.md").exists()
    assert (tmp_path / "compare" / "report.md").exists()
    assert list((tmp_path / "tables").glob("tables_*.md"))


def test_every_readme_mibench_command_is_run_or_skipped_for_a_reason():
    """Nothing is dropped silently: each line runs, or a rule above names why not."""
    for command in readme_commands(README.read_text()):
        reason = skip_reason(command)
        assert reason or command.split()[0] == "mibench", \
            f"README command {command!r} is neither run nor skipped by a rule"


def test_ci_installs_as_the_readme_says():
    """The quick start's install line is what CI runs, word for word."""
    install = [c for c in readme_commands(README.read_text()) if c.startswith("pip install")]
    assert install, "no install line in the README"
    ci = (ROOT / ".ci" / "run").read_text()
    assert install[0] in " ".join(shlex.split(ci, comments=True)), \
        f".ci/run does not run the README's install line: {install[0]}"


@pytest.mark.parametrize("text, expected", [
    ("```bash\nmibench a=1   # note\nmibench b \\\n  c=2\n```\n", ["mibench a=1", "mibench b c=2"]),
    ("```bash\npip install x && mibench\n```\n```text\nmibench no\n```", ["pip install x",
                                                                        "mibench"]),
])
def test_commands_are_read_from_bash_blocks_only(text, expected):
    assert readme_commands(text) == expected


PRODUCT = ("benchmarks", "tasks", "perturbations", "models", "conf", "scripts", "results",
           "README.md", "pyproject.toml")
# what a user's copy cannot hold: the developers' notes, this machine's home directories
FOREIGN = re.compile(r"shared/notes|\.\./shared|(?<![\w.])/(work|root|home)/\w")


def test_product_files_refer_to_no_file_outside_the_project():
    found = []
    for top in PRODUCT:
        for path in sorted([ROOT / top] if (ROOT / top).is_file() else (ROOT / top).rglob("*")):
            relative = path.relative_to(ROOT).as_posix()
            if not path.is_file():
                continue
            try:
                text = path.read_text()
            except UnicodeDecodeError:
                continue  # weights, images, archives
            found += [f"{relative}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0)}"
                      for m in FOREIGN.finditer(text)]
    assert not found, "\n".join(found)
