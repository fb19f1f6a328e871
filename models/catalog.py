"""`mibench models`: every model config, its family, adapter, checkpoint and what it needs.

It reads the YAMLs and the adapters' source only: importing torch or transformers to list
configs would cost seconds.
"""

from __future__ import annotations

import argparse
import ast
import importlib.metadata
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from packaging.requirements import Requirement
from packaging.version import Version


@dataclass(frozen=True)
class FamilyInfo:
    """What a family's checkpoints need beyond the suite's own requirements."""

    family: str
    pattern: str           # matched against the config's hub id or path
    min_transformers: str  # first release with the architecture (the suite may need more)
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
    FamilyInfo("Mllama (Llama 3.2 Vision)", r"llama-3\.2-\d+b-vision", "4.45",
               "gated on the hub"),
    FamilyInfo("Aya Vision", r"aya-vision", "4.50", "gated on the hub"),
)


def config_dir() -> Path:
    import mibench.conf

    return Path(mibench.conf.__file__).parent / "model"


def family_of(path: str) -> FamilyInfo | None:
    for info in FAMILIES:
        if re.search(info.pattern, path, flags=re.IGNORECASE):
            return info
    return None


def suite_requirement(package: str) -> str | None:
    """The version floor the installed suite declares for `package` (pyproject), e.g. '5.0'."""
    try:
        requires = importlib.metadata.requires("mibench") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for line in requires:
        req = Requirement(line)
        if req.name == package and req.marker is None:
            floors = [s.version for s in req.specifier if s.operator in (">=", "==", "~=")]
            return max(floors, key=Version) if floors else None
    return None


def installed_version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def adapter_problem(class_path: str) -> str | None:
    """Why `module.Class` cannot be an adapter, found from the module's source, or None."""
    module, _, cls = class_path.rpartition(".")
    try:
        spec = importlib.util.find_spec(module) if module else None
    except (ImportError, ValueError) as err:
        return str(err)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return f"no module {module!r}"
    tree = ast.parse(Path(spec.origin).read_text(), filename=spec.origin)
    names = {node.name for node in tree.body if isinstance(node, ast.ClassDef)}
    names |= {alias.asname or alias.name for node in tree.body
              if isinstance(node, ast.ImportFrom) for alias in node.names}
    return None if cls in names else f"module {module!r} has no class {cls!r}"


def checkpoint_label(path: object) -> str:
    """The config's checkpoint as a reader should see it, never a raw `${...}`."""
    if path in (None, "???"):
        return "(set model.path)"
    embedded = re.fullmatch(r"\$\{mibench_asset:(\w+)\}", str(path))
    if embedded:
        return f"embedded ({embedded.group(1)})"
    return "(set at run time)" if "${" in str(path) else str(path)


def transformers_floor(info: FamilyInfo | None, suite_floor: str | None) -> str:
    """The release a config needs: the family's first, or the suite's own floor if later."""
    floors = [f for f in (info.min_transformers if info else None, suite_floor) if f]
    return f">={max(floors, key=Version)}" if floors else ""


def read_model_yaml(yaml_path: Path) -> DictConfig:
    """A model YAML with the bases its `defaults` list names (`/model_base/X@_here_`) merged
    in, as Hydra composes it, without composing the whole config."""
    cfg = OmegaConf.load(yaml_path)
    defaults = list(cfg.pop("defaults", None) or [])
    conf_root = yaml_path.parent.parent
    parts = [cfg if entry == "_self_" else
             OmegaConf.load(conf_root / f"{str(entry).removesuffix('@_here_').lstrip('/')}.yaml")
             for entry in defaults]
    if "_self_" not in defaults:
        parts.append(cfg)
    return OmegaConf.merge(*parts) if parts else cfg


def describe_config(yaml_path: Path, suite_floor: str | None = None) -> dict[str, str]:
    """One table row: read the YAML without resolving it, check its adapter in the source."""
    cfg = read_model_yaml(yaml_path)
    target = str(cfg.get("_target_", ""))
    module, _, attr = target.rpartition(".")
    class_path = module if attr == "from_pretrained" else target
    adapter = class_path.rpartition(".")[2] or "?"
    problem = adapter_problem(class_path)
    if problem:
        adapter = f"BROKEN: {target} ({problem})"
    raw_path = OmegaConf.to_container(cfg, resolve=False).get("path")
    path = checkpoint_label(raw_path)
    if "base_url" in OmegaConf.to_container(cfg, resolve=False):  # a served model (openai)
        path = "(served: set model.base_url, model.model)"
    info = family_of(str(raw_path or ""))
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
        "transformers": transformers_floor(info, suite_floor),
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
    floor = suite_requirement("transformers")
    rows = [describe_config(f, floor) for f in files]
    print(table(rows))
    print(f"\ntransformers: the suite needs >={floor or '?'}, installed "
          f"{installed_version('transformers') or 'none'}")
    print("run one: mibench model=NAME [model.path=DIR_OR_HUB_ID] [model.revision=COMMIT]")
    return 1 if any(r["adapter"].startswith("BROKEN") for r in rows) else 0
