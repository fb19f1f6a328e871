"""The reference study's released code, read at a pinned commit for the texts it authored.

`benchmark=cai2025_official` must show models exactly the texts Cai et al. showed theirs: the
system prompt, the pool of unrelated sentences, the retry suffix. They are read from the
study's own repository (luisrui/Modality-Interference-in-MLLMs) at `STUDY_COMMIT`, never
pasted into this one. Each file comes from, in this order:

1. a local copy of the repository named by the `MIBENCH_STUDY_CODE` environment variable
   (a clone checked out at the commit, or any folder with the same relative paths);
2. the mibench cache (`<cache>/study-release/<repo>/<commit>/<path>`);
3. `https://raw.githubusercontent.com/<repo>/<commit>/<path>`, then kept in the cache.

Every file read is checked against the sha256 pinned below for that commit (git serves the
same bytes at a commit forever), so a copy at another commit, or edited, is refused by name.
`verify=False` accepts any content and says so in `describe()` (`verified: false`): that is
how tests and the dry run use fixture files written in the same layout.

The texts are taken out of the Python and YAML sources with `ast` and `yaml.safe_load`
(literals only; nothing is imported or run).
"""

from __future__ import annotations

import ast
import hashlib
import os
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .atomic import write_text_atomic
from .digests import cache_dir
from .errors import MibenchError

STUDY_REPO = "luisrui/Modality-Interference-in-MLLMs"
STUDY_COMMIT = "911003ab0c4f1a0c5c4b7bad893f784efccf41ff"
CODE_ENV = "MIBENCH_STUDY_CODE"
MAX_FILE_BYTES = 1 << 20  # the largest file read here (model_utils.py) is about 20 KB
DOWNLOAD_TIMEOUT_S = 60
RAW_URL = "https://raw.githubusercontent.com/{repo}/{commit}/{path}"

# The files read, and their sha256 at STUDY_COMMIT (`git show <commit>:<path> | sha256sum`).
PROMPT_MODULE = "modules/prompt/__init__.py"
TEXT_INTERFERE = "modules/prompt/text_interfere.py"
MODEL_UTILS = "modules/utils/model_utils.py"
INFERENCE_CONFIGS = (
    "configs/model_inference/image_heavy/args_caltech101.yaml",
    "configs/model_inference/image_heavy/args_miniImageNet.yaml",
    "configs/model_inference/text_heavy/args_mmlu.yaml",
    "configs/model_inference/text_heavy/args_openbookqa.yaml",
    "configs/model_inference/VQA/args_mmbench.yaml",
    "configs/model_inference/VQA/args_scienceqa.yaml",
    "configs/model_inference/VQA/args_seedbench.yaml",
)
PINNED_SHA256: dict[str, dict[str, str]] = {
    STUDY_COMMIT: {
        PROMPT_MODULE: "89669cbadb2e4fb53a2c38a794339ae12f38e4b74a47b9826c2c6deb0f685568",
        TEXT_INTERFERE: "a25403808f351ceb44e4eeebdf43de007b9eca60daba6dbda8b89a97a4b9a5a3",
        MODEL_UTILS: "af399c48085359ad51fc932780d90b86233941360ec4f7bda39cf7eb68c80721",
        INFERENCE_CONFIGS[0]: "5a6e9b4ad1571bd1cb77ac7f4080a8f7acd4b382a5640f461f7db6eb8d1880a6",
        INFERENCE_CONFIGS[1]: "5e7a9a532ff20ff63a5afa9ad36f32a0b328487d14ad8b7de9be232796540eb3",
        INFERENCE_CONFIGS[2]: "7595817f72d53693f43b2a03f51af1b050d0e3eff2fa1dd85465df4ce6e8d4e4",
        INFERENCE_CONFIGS[3]: "169fc371d3113cc8143b19e18c6b0516fb46a2adb5cbdff9aa941f649bf55c48",
        INFERENCE_CONFIGS[4]: "3237154c75c51a3f624d54c0464e3fa90726ea0c569021853fc6f4bd4cdd83df",
        INFERENCE_CONFIGS[5]: "5d5bc29f1bc5de5b774400c52b28123c95ea499b88dc39d10ad3827c2320c893",
        INFERENCE_CONFIGS[6]: "0def1f0deb146d37e64c493ba9ec1ef972648e24cb41f13d6a6acfdd41ba20ce",
    },
}

# Where in the sources each text sits (names in the study's code).
UNRELATED_FUNCTION = "generate_unrelated_distraction_prompts"
POOL_NAME = "all_facts"
RETRY_FUNCTION = "model_predict_and_extract"


class ReleaseError(MibenchError, RuntimeError):
    """A released file that cannot be had, does not match its pin, or is not laid out as the
    pinned code is; the message names the file and what to do."""


def sha256_text(text: str) -> str:
    """The digest results record for a text taken from the release (its UTF-8 bytes)."""
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class UnrelatedPool:
    """The study's unrelated-text stimulus: `draws` sentences drawn uniformly with
    replacement (`random.choice` each time) from `sentences`, joined by `separator`."""

    sentences: tuple[str, ...]
    draws: int
    separator: str = " "

    def describe(self) -> dict:
        return {"sentences": len(self.sentences), "draws": self.draws,
                "replacement": True, "separator": self.separator,
                "sha256": sha256_text("\n".join(self.sentences))}


@dataclass(frozen=True)
class StudyRelease:
    """The study's repository at one commit: reads and checks its files (see module doc)."""

    repo: str = STUDY_REPO
    commit: str = STUDY_COMMIT
    verify: bool = True
    _read: dict[str, str] = field(default_factory=dict, init=False, compare=False, repr=False)

    @classmethod
    def from_config(cls, config: Any = None) -> StudyRelease:
        """A release from a config mapping ({repo, commit, verify}); None: the pinned one."""
        if config is None:
            return cls()
        if isinstance(config, StudyRelease):
            return config
        if not hasattr(config, "get"):
            raise ReleaseError(f"release: expected a mapping with repo, commit and verify, got "
                               f"{type(config).__name__}")
        unknown = set(config) - {"repo", "commit", "verify"}
        if unknown:
            raise ReleaseError(f"release: unknown key(s) {sorted(unknown)}; it takes repo, "
                               "commit and verify")
        return cls(repo=str(config.get("repo", STUDY_REPO)),
                   commit=str(config.get("commit", STUDY_COMMIT)),
                   verify=bool(config.get("verify", True)))

    # -- files ---------------------------------------------------------------------------
    def url(self, path: str) -> str:
        return RAW_URL.format(repo=self.repo, commit=self.commit, path=path)

    def cached(self, path: str) -> Path:
        return (cache_dir() / "study-release" / self.repo.replace("/", "+") / self.commit
                / path)

    def expected(self, path: str) -> str | None:
        """The pinned sha256 of `path`; refuses a commit or file without a pin when verifying."""
        if not self.verify:
            return None
        pins = PINNED_SHA256.get(self.commit)
        if pins is None or path not in pins:
            raise ReleaseError(
                f"no sha256 is pinned for {path} at {self.repo}@{self.commit}; use the pinned "
                f"commit {STUDY_COMMIT}, or release.verify=false to accept any content "
                "(results then say `verified: false`)")
        return pins[path]

    def text(self, path: str) -> str:
        """The file's text, from a local copy, the cache or GitHub, checked against its pin."""
        if path in self._read:
            return self._read[path]
        expected = self.expected(path)
        local = os.environ.get(CODE_ENV)
        if local:
            data, source = self._local(Path(local) / path), f"{local}/{path} ({CODE_ENV})"
        elif self.cached(path).is_file():
            data, source = self._local(self.cached(path)), str(self.cached(path))
        else:
            data, source = self._download(path), self.url(path)
        digest = hashlib.sha256(data).hexdigest()
        if expected is not None and digest != expected:
            raise ReleaseError(
                f"{source}: sha256 {digest} is not the pinned {expected} of {path} at "
                f"{self.repo}@{self.commit}; check out that commit (git -C DIR checkout "
                f"{self.commit}), or remove the cached copy to fetch it again")
        try:
            text = data.decode()
        except UnicodeDecodeError as err:
            raise ReleaseError(f"{source} is not UTF-8 text: {err}") from err
        if not local and not self.cached(path).is_file():  # checked: keep it for next time
            self.cached(path).parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.cached(path), text)
        self._read[path] = text
        return text

    def _local(self, path: Path) -> bytes:
        if not path.is_file():
            raise ReleaseError(f"{path} does not exist; {CODE_ENV} must name a copy of "
                               f"{self.repo} at commit {self.commit} (git clone, then checkout)")
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ReleaseError(f"{path} is larger than {MAX_FILE_BYTES:,} bytes; not the "
                               "released source file")
        return path.read_bytes()

    def _download(self, path: str) -> bytes:
        url = self.url(path)
        try:
            with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:  # noqa: S310
                data = response.read(MAX_FILE_BYTES + 1)
        except (urllib.error.URLError, OSError, ValueError) as err:
            raise ReleaseError(
                f"cannot download {url} ({err}); without network, clone {self.repo}, check "
                f"out {self.commit} and set {CODE_ENV}=<that folder>") from err
        if len(data) > MAX_FILE_BYTES:
            raise ReleaseError(f"{url} is larger than {MAX_FILE_BYTES:,} bytes")
        return data

    def describe(self) -> dict:
        """The pin, whether files were checked, and the digest of every file read so far."""
        return {"repo": self.repo, "commit": self.commit, "verified": self.verify,
                "files": {p: sha256_text(t) for p, t in sorted(self._read.items())}}

    # -- texts -------------------------------------------------------------------------------
    def _module(self, path: str) -> ast.Module:
        try:
            return ast.parse(self.text(path), filename=path)
        except (SyntaxError, ValueError, RecursionError) as err:
            raise ReleaseError(f"{path} of {self.repo}@{self.commit} is not Python the "
                               f"reader understands: {err}") from err

    def string(self, path: str, name: str) -> str:
        """A module-level string constant, e.g. `qa_image_prompt` of the prompt module."""
        for node in self._module(path).body:
            if (isinstance(node, ast.Assign) and len(node.targets) == 1
                    and isinstance(node.targets[0], ast.Name) and node.targets[0].id == name):
                if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
                    return node.value.value
                raise ReleaseError(f"{path}: {name} is not a string literal")
        raise ReleaseError(f"{path} of {self.repo}@{self.commit} assigns no {name!r}")

    def system_prompt(self, name: str = "qa_image_prompt") -> str:
        """A system prompt of the study's prompt module (its eval uses `qa_image_prompt`)."""
        return self.string(PROMPT_MODULE, name)

    def unrelated_pool(self) -> UnrelatedPool:
        """The sentences of `generate_unrelated_distraction_prompts`, in the order its
        `all_facts` concatenates its lists, and how many it draws per question."""
        function = _function(self._module(TEXT_INTERFERE), UNRELATED_FUNCTION, TEXT_INTERFERE)
        lists: dict[str, list[str]] = {}
        order: list[str] | None = None
        draws: int | None = None
        for node in ast.walk(function):
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(
                    node.targets[0], ast.Name):
                target = node.targets[0].id
                if isinstance(node.value, ast.List):
                    values = [e.value for e in node.value.elts if isinstance(e, ast.Constant)]
                    if values and all(isinstance(v, str) for v in values) and len(
                            values) == len(node.value.elts):
                        lists[target] = values
                elif target == POOL_NAME:
                    order = _added_names(node.value)
            elif isinstance(node, ast.ListComp):
                draws = _range_count(node) or draws
        if not order or any(name not in lists for name in order):
            raise ReleaseError(f"{TEXT_INTERFERE}: {UNRELATED_FUNCTION} does not build "
                               f"{POOL_NAME} from its sentence lists as the pinned code does")
        if draws is None:
            raise ReleaseError(f"{TEXT_INTERFERE}: {UNRELATED_FUNCTION} draws no "
                               "`[... for _ in range(N)]` sentences")
        return UnrelatedPool(tuple(s for name in order for s in lists[name]), draws)

    def retry_suffix(self) -> str:
        """The text `model_predict_and_extract` appends to an unparsed sample's question."""
        function = _function(self._module(MODEL_UTILS), RETRY_FUNCTION, MODEL_UTILS)
        for node in ast.walk(function):
            if (isinstance(node, ast.AugAssign) and isinstance(node.op, ast.Add)
                    and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)):
                return node.value.value
        raise ReleaseError(f"{MODEL_UTILS}: {RETRY_FUNCTION} appends no string literal")

    def inference_settings(self) -> dict[str, dict[str, Any]]:
        """Each zero-shot inference config's generation settings (max_new_tokens, ...)."""
        settings = {}
        for path in INFERENCE_CONFIGS:
            try:
                loaded = yaml.safe_load(self.text(path))
            except yaml.YAMLError as err:
                raise ReleaseError(f"{path} is not YAML: {err}") from err
            if not isinstance(loaded, dict):
                raise ReleaseError(f"{path} is not a mapping of settings")
            settings[path] = loaded
        return settings


def _function(module: ast.Module, name: str, path: str) -> ast.FunctionDef:
    for node in ast.walk(module):
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return node
    raise ReleaseError(f"{path} defines no function {name!r}")


def _added_names(node: ast.AST) -> list[str] | None:
    """`a + b + c` as ["a", "b", "c"]; None for anything else."""
    if isinstance(node, ast.Name):
        return [node.id]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _added_names(node.left), _added_names(node.right)
        return None if left is None or right is None else left + right
    return None


def _range_count(node: ast.ListComp) -> int | None:
    """N of `[... for _ in range(N)]`."""
    if len(node.generators) != 1:
        return None
    it = node.generators[0].iter
    if (isinstance(it, ast.Call) and isinstance(it.func, ast.Name) and it.func.id == "range"
            and len(it.args) == 1 and isinstance(it.args[0], ast.Constant)
            and isinstance(it.args[0].value, int)):
        return int(it.args[0].value)
    return None
