"""`mibench models`: every model config, its family, adapter, checkpoint and what it needs."""

from __future__ import annotations

import argparse
import importlib
import re
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf


@dataclass(frozen=True)
class FamilyInfo:
    """What a family's checkpoints need beyond the suite's own requirements."""

    family: str
    pattern: str           # matched against the config's hub id or path
    min_transformers: str  # first release with the architecture (the suite needs >= 5.0)
    needs: str = ""


FAMILIES: tuple[FamilyInfo, ...] = (
    FamilyInfo("LLaVA (embedded toy)", r"toy_llava", "5.0"),
    FamilyInfo("LLaVA-1.5", r"llava-1\.5", "4.36"),
    FamilyInfo("LLaVA-NeXT", r"llava-v1\.6|llava-next", "4.39"),
    FamilyInfo("InstructBLIP", r"instructblip", "4.31",
               "text-only: language model alone (no query tokens)"),
    FamilyInfo("Qwen2.5-VL", r"qwen2\.5-vl", "4.49"),
    FamilyInfo("Qwen2-VL", r"qwen2-vl", "4.45"),
    FamilyInfo("InternVL (-hf)", r"internvl.*-hf", "4.52"),
    FamilyInfo("Idefics3", r"idefics3", "4.46"),
    FamilyInfo("SmolVLM", r"smolvlm", "4.50", "pip install num2words"),
    FamilyInfo("PaliGemma", r"paligemma", "4.41", "gated on the hub"),
    FamilyInfo("Gemma 3", r"(^|/)gemma-3", "4.50", "gated on the hub"),
)


def config_dir() -> Path:
    import mibench.conf

    return Path(mibench.conf.__file__).parent / "model"


def family_of(path: str) -> FamilyInfo | None:
    for info in FAMILIES:
        if re.search(info.pattern, path, flags=re.IGNORECASE):
            return info
    return None


def describe_config(yaml_path: Path) -> dict[str, str]:
    """One table row: read the YAML without resolving it, import its adapter class."""
    cfg = OmegaConf.load(yaml_path)
    target = str(cfg.get("_target_", ""))
    module, _, attr = target.rpartition(".")
    class_path = module if attr == "from_pretrained" else target
    adapter = class_path.rpartition(".")[2] or "?"
    try:
        mod, _, cls = class_path.rpartition(".")
        getattr(importlib.import_module(mod), cls)
    except (ImportError, AttributeError, ValueError) as err:
        adapter = f"BROKEN: {target} ({err})"
    keys = OmegaConf.to_container(cfg, resolve=False)
    path = keys.get("path")
    path = "(set model.path)" if path in (None, "???") else str(path)
    if "base_url" in keys:  # a served model (model=openai)
        path = "(served: set model.base_url, model.model)"
    info = family_of(path)
    needs = []
    if cfg.get("trust_remote_code"):
        needs.append("trust_remote_code")
    if cfg.get("device_map"):
        needs.append(f"device_map={cfg.device_map}")
    if info is not None and info.needs:
        needs.append(info.needs)
    return {
        "config": yaml_path.stem,
        "family": info.family if info else ("any (generic)" if path.startswith("(") else "?"),
        "adapter": adapter,
        "checkpoint": path,
        "dtype": str(cfg.get("dtype", "")),
        "transformers": f">={info.min_transformers}" if info else "",
        "needs": "; ".join(needs) or "-",
    }


def table(rows: list[dict[str, str]]) -> str:
    """A markdown table (readable as plain text too)."""
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in columns}
    line = lambda cells: "| " + " | ".join(cells) + " |"  # noqa: E731
    out = [line(c.ljust(widths[c]) for c in columns),
           line("-" * widths[c] for c in columns)]
    out += [line(r[c].ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mibench models",
        description="List the model configs (mibench model=NAME) and what each needs.")
    parser.add_argument("--dir", type=Path, default=None, help="another conf/model directory")
    args = parser.parse_args(argv)
    folder = args.dir or config_dir()
    files = sorted(folder.glob("*.yaml"))
    if not files:
        print(f"no model configs in {folder}")
        return 1
    rows = [describe_config(f) for f in files]
    print(table(rows))
    print("\nrun one: mibench model=NAME [model.path=DIR_OR_HUB_ID] [model.revision=COMMIT]")
    return 1 if any(r["adapter"].startswith("BROKEN") for r in rows) else 0
