"""The generic adapter for any `AutoModelForImageTextToText` checkpoint with a chat template.

Family modules (instructblip.py, mllama.py, paligemma.py, smolvlm.py) subclass `HFModelAdapter`
and override only what their checkpoints do differently; a YAML's `_target_` picks the class.
How processors load is in hf_processor.py, how encodings are merged and padded in
hf_batching.py, generation in hf_generate.py, the white-box contract in hf_white_box.py.
What is left here stays together although it passes 500 lines: loading, prompt rendering,
answer-letter resolution and scoring all read the same processor, tokenizer and caches, and
the family adapters override pieces of each.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from transformers import (
    AutoModelForImageTextToText,
    BatchFeature,
    PreTrainedModel,
    ProcessorMixin,
)

from mibench.digests import checkpoint_digest
from mibench.errors import MibenchError
from mibench.prompt_styles import PromptStyle, prompt_style
from mibench.records import OPTION_LETTERS, Sample

from . import vocabulary
from .base import option_distributions
from .families import family_adapter, model_type_of
from .hf_batching import TOKEN_KEYS, left_align, merge_left_padded
from .hf_generate import HFGeneration
from .hf_processor import load_processor
from .hf_white_box import HFWhiteBox
from .load_errors import load_failure

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
          "float64": torch.float64}
DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "fp64": "float64"}

# torch.cuda.OutOfMemoryError is an alias of torch.OutOfMemoryError in recent torch; both
# spellings are listed so older versions are covered too.
OOM_ERRORS: tuple[type[BaseException], ...] = tuple(
    {getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError),
     torch.cuda.OutOfMemoryError})



RENDER_CACHE_SIZE = 100_000  # rendered prompts kept per adapter
# Shares of a task's words that the tokenizer maps to its unknown token above which the run
# warns, and refuses (a config's unknown_words_warn / unknown_words_refuse override them).
UNKNOWN_WORDS_WARN = 0.01
UNKNOWN_WORDS_REFUSE = 0.25

# The keys holding raw pixels: a batch without them has no images to encode, and a forward
# given the image encoder's output must not get them too.
PIXEL_KEYS = ("pixel_values", "pixel_values_images", "image_patches")


@dataclass(frozen=True)
class PreparedBatch:
    """A batch's host-side inputs, and the key of its images (None: no images)."""

    inputs: BatchFeature
    image_key: str | None


def image_inputs_key(encoding: BatchFeature) -> str | None:
    """A digest of everything in the encoding that the image encoder reads (not the tokens).

    Two batches with the same digest give the image encoder identical inputs, hence identical
    outputs: reusing one is exact, not approximate.
    """
    if not any(k in encoding for k in PIXEL_KEYS):
        return None
    image_parts = sorted(k for k, v in encoding.items()
                         if k not in TOKEN_KEYS and isinstance(v, torch.Tensor))
    digest = hashlib.blake2b(digest_size=16)
    for key in image_parts:
        tensor = encoding[key].detach().cpu().contiguous()
        digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class AnswerTokenError(MibenchError, RuntimeError):
    """The tokenizer cannot represent an option letter as one token at the answer position."""


class CheckpointError(MibenchError, RuntimeError):
    """A checkpoint that cannot be loaded or prompted; the message names it and the fix."""


class VocabularyError(MibenchError, ValueError):
    """The tokenizer maps too much of a task's text to its unknown token to score it."""


class HFModelAdapter(HFGeneration, HFWhiteBox):
    """Loads a checkpoint by hub id or local directory and scores option letters.

    Prompts go through the chat template (the processor's, else its tokenizer's, else a
    `prompt_format`); batches are left-padded so the answer position is the last one for
    every sample; the letter token ids are checked at load time. Attacks and training use
    its white-box half (`HFWhiteBox`: forward passes with pixels or embeddings replaced);
    scorer=generate its greedy generation (`HFGeneration`).
    """

    model_class = AutoModelForImageTextToText
    # A prompt format ("{prompt}" = the question block, "{bos}" = the BOS token) for
    # checkpoints without a chat template; a config's `prompt_format` overrides both.
    default_prompt_format: str | None = None
    # True where the processor cannot take a batch mixing image and text-only samples (it
    # refuses text-only prompts, or adds image tokens to every prompt): the two groups are
    # encoded apart and merged, left-padded, in the batch's order.
    encode_text_only_apart = False
    # False where the image encoder reads the prompt too (a Q-Former): nothing to reuse.
    reuses_image_features = True

    def __init__(self, model: PreTrainedModel, processor: ProcessorMixin, name: str,
                 provenance: dict | None = None, *, prompt_format: str | None = None,
                 unknown_words_warn: float = UNKNOWN_WORDS_WARN,
                 unknown_words_refuse: float = UNKNOWN_WORDS_REFUSE,
                 prompt: str | dict | PromptStyle | None = None) -> None:
        if not 0 <= unknown_words_warn <= unknown_words_refuse <= 1:
            raise ValueError("need 0 <= model.unknown_words_warn <= model.unknown_words_refuse "
                             f"<= 1, got {unknown_words_warn} and {unknown_words_refuse}")
        self.unknown_words_warn, self.unknown_words_refuse = (unknown_words_warn,
                                                              unknown_words_refuse)
        self.model, self.processor, self.name = model.eval(), processor, name
        self.provenance = dict(provenance or {})
        self.device = model.device
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.oom_backoffs = 0  # batches split in halves after running out of GPU memory
        self.prompt_format = prompt_format
        self.prompt = prompt_style(prompt)  # how samples become text (mibench.prompt_styles)
        if self.prompt.name != "default":
            self.provenance["prompt"] = self.prompt.describe()
        self.chat_template = None
        if prompt_format is None:
            self.chat_template = (getattr(processor, "chat_template", None)
                                  or getattr(self.tokenizer, "chat_template", None))
            if self.chat_template is None:
                self.prompt_format = self.default_prompt_format
        if self.chat_template is None and self.prompt_format is None:
            raise CheckpointError(
                f"model {name!r}: neither its processor nor its tokenizer has a chat template; "
                "set model.prompt_format (e.g. '{prompt}\\nAnswer:') to say how a question is "
                "shown to it")
        if self.prompt_format is not None:
            self.provenance["prompt_format"] = self.prompt_format
        self._rendered: dict[tuple[str, bool], str] = {}
        # The runner prepares the next batch in a background thread; a fast tokenizer's
        # padding state is shared and mutable, so one thread tokenizes at a time.
        self._tokenizer_lock = threading.RLock()
        # The last batch's image-encoder output, by its images' key: the runner scores the
        # conditions that share a batch's images one after the other, so one is enough.
        self._image_features: tuple[str, object] | None = None
        self.image_feature_reuses = 0  # forward passes that reused a batch's image features
        # The letters A, B, ... as single tokens, as far as the tokenizer offers them; why the
        # next one is not (a task that needs it is refused by `check_samples`).
        self.letter_ids, self._letters_end = self._resolve_letter_ids()

    @classmethod
    def from_pretrained(
        cls,
        path: str,
        name: str | None = None,
        revision: str | None = None,
        dtype: str = "float32",
        device: str = "auto",
        attn_implementation: str | None = None,
        trust_remote_code: bool = False,
        device_map: str | dict | None = None,
        prompt_format: str | None = None,
        unknown_words_warn: float = UNKNOWN_WORDS_WARN,
        unknown_words_refuse: float = UNKNOWN_WORDS_REFUSE,
        prompt: str | dict | PromptStyle | None = None,
    ) -> HFModelAdapter:
        """Load by hub id or local directory; `revision` pins a hub commit, tag or branch.

        `device_map` (e.g. "auto") spreads a model too big for one GPU over the devices
        (Accelerate); without it the whole model goes to `device`. Called on the generic
        class, a checkpoint of a family with its own adapter (`families.FAMILY_ADAPTERS`)
        is loaded by that adapter. `unknown_words_*`: see `check_samples`. `prompt`: the
        prompt style (mibench.prompt_styles; None: the suite's default).
        """
        dtype = DTYPE_ALIASES.get(dtype, dtype)
        if dtype not in DTYPES:
            raise ValueError(f"model.dtype={dtype!r} is not one of "
                             f"{sorted(DTYPES) + sorted(DTYPE_ALIASES)}")
        path = str(path)
        if path.startswith(("/", "./", "../", "~")) and not Path(path).expanduser().is_dir():
            raise CheckpointError(f"model path {path!r} is not a directory; give a local "
                                  "checkpoint directory or a hub id such as 'owner/name'")
        if cls is HFModelAdapter:
            model_type = model_type_of(path, revision)
            family = family_adapter(model_type)
            if family is not None:
                log.info("model %s: %s checkpoint, loaded by %s", path, model_type,
                         family.__name__)
                return family.from_pretrained(
                    path, name=name, revision=revision, dtype=dtype, device=device,
                    attn_implementation=attn_implementation,
                    trust_remote_code=trust_remote_code, device_map=device_map,
                    prompt_format=prompt_format, unknown_words_warn=unknown_words_warn,
                    unknown_words_refuse=unknown_words_refuse, prompt=prompt)
        device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        load = {"revision": revision, "trust_remote_code": trust_remote_code}
        extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
        if device_map is not None:
            extra["device_map"] = device_map
        try:
            processor = cls.load_processor(path, **load)
            model = cls.model_class.from_pretrained(path, dtype=DTYPES[dtype], **load, **extra)
        except (OSError, ValueError, KeyError, ImportError) as err:
            raise CheckpointError(load_failure(err, path, revision, cls)) from err
        if device_map is None:
            model = model.to(device)
        provenance = {"path": path, "revision": revision, "dtype": dtype,
                      "commit": getattr(model.config, "_commit_hash", None),
                      "trust_remote_code": trust_remote_code,
                      "attn_implementation": attn_implementation,
                      "device_map": device_map,
                      # the exact files loaded: swapped weights under one path are another run
                      "weights_sha256": checkpoint_digest(
                          path, getattr(model.config, "_commit_hash", None) or revision)}
        return cls(model, processor, name or path.rstrip("/").split("/")[-1], provenance,
                   prompt_format=prompt_format, unknown_words_warn=unknown_words_warn,
                   unknown_words_refuse=unknown_words_refuse, prompt=prompt)

    @classmethod
    def load_processor(cls, path: str, **load) -> ProcessorMixin:
        return load_processor(path, **load)

    # -- prompts -------------------------------------------------------------------------
    def render(self, sample: Sample, suffix: str = "") -> str:
        """The full prompt text, chat template and generation prompt included, through the
        adapter's prompt style; `suffix` is appended to the user's text (a retry).

        Memoised on what the text depends on (the user's text and whether an image
        comes first): the runner asks for a prompt's length and then encodes it.
        """
        prompt = self.prompt.user_text(sample, suffix)
        key = (prompt, sample.image is not None)
        rendered = self._rendered.get(key)
        if rendered is None:
            if self.chat_template is None:
                rendered = self.prompt.plain_prompt(sample, self.prompt_format,
                                                    self.tokenizer.bos_token or "", suffix)
            else:
                rendered = self.apply_chat_template(self.prompt.messages(sample, suffix))
            if len(self._rendered) >= RENDER_CACHE_SIZE:
                self._rendered.clear()
            self._rendered[key] = rendered
        return rendered

    def clear_caches(self) -> None:
        """Forget rendered prompts and image features (benchmarks time them too)."""
        self._rendered.clear()
        self.drop_reused_inputs()

    def drop_reused_inputs(self) -> None:
        self._image_features = None

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True
                            ) -> str:
        return self.processor.apply_chat_template(
            messages, chat_template=self.chat_template,
            add_generation_prompt=add_generation_prompt, tokenize=False)

    def processor_text(self, sample: Sample, suffix: str = "") -> str:
        """What the processor is given for a sample with an image (it expands the image)."""
        return self.render(sample, suffix)

    def _adds_special_tokens(self, text: str) -> bool:
        """False when the template already wrote BOS (tokenizing again would double it)."""
        bos = self.tokenizer.bos_token
        return not (bos and text.startswith(bos))

    def _token_ids(self, text: str) -> list[int]:
        with self._tokenizer_lock:
            return self.tokenizer(text,
                                  add_special_tokens=self._adds_special_tokens(text)).input_ids

    def prompt_length(self, sample: Sample) -> int:
        return len(self._token_ids(self.render(sample)))

    def prompt_lengths(self, samples: Sequence[Sample]) -> list[int]:
        """One tokenizer call per BOS form for the whole list (one call per prompt is slow)."""
        texts = [self.render(s) for s in samples]
        lengths = [0] * len(texts)
        for add_special in (True, False):
            which = [i for i, t in enumerate(texts) if self._adds_special_tokens(t) == add_special]
            if not which:
                continue
            with self._tokenizer_lock:
                ids = self.tokenizer([texts[i] for i in which],
                                     add_special_tokens=add_special).input_ids
            for i, row in zip(which, ids, strict=True):
                lengths[i] = len(row)
        return lengths

    def _resolve_letter_ids(self) -> tuple[tuple[int, ...], str]:
        """Token ids of A, B, C, ... as the model would emit each right after the prompt, as
        far as the tokenizer offers them; and why the next letter is not offered.

        A letter that merges with the prompt, splits into several tokens, is the unknown
        token or shares an id cannot be scored by one forward pass: it ends the list (a task
        needing it is refused by `check_samples`, a task needing fewer is scored). Fewer
        than two letters cannot score any question, so that is refused here.
        """
        probe = Sample(id="letter-probe", question="Which letter?", options=("x", "y"),
                       answer=0, category="text_heavy")
        prompt = self.render(probe)
        base = self._token_ids(prompt)
        prefix = self._letter_prefix(probe, prompt)
        unknown = self.tokenizer.unk_token_id
        ids: list[int] = []
        end = f"the alphabet ends at {OPTION_LETTERS[-1]!r}"
        for letter in OPTION_LETTERS:
            full = self._token_ids(prompt + prefix + letter)
            if full[: len(base)] != base or len(full) != len(base) + 1:
                extra = self.tokenizer.convert_ids_to_tokens(full[len(base) - 1:])
                end = (f"option letter {prefix + letter!r} after the generation prompt is not "
                       f"one token of its own (tokens {extra})")
            elif full[-1] == unknown:
                end = f"option letter {prefix + letter!r} is the unknown token"
            elif full[-1] in ids:
                end = (f"option letter {prefix + letter!r} shares token id {full[-1]} with "
                       f"{prefix + OPTION_LETTERS[ids.index(full[-1])]!r}")
            else:
                ids.append(full[-1])
                continue
            break
        if len(ids) < 2:
            raise AnswerTokenError(f"model {self.name!r}: {end}; scoring needs at least the "
                                   "letters A and B as single tokens after the prompt")
        return tuple(ids), end

    def _letter_prefix(self, probe: Sample, prompt: str) -> str:
        """" " or "": whether the answer letter follows the generation prompt after a space.

        After whitespace it comes bare. Otherwise the chat template says how it writes an
        assistant's answer after the generation prompt: "ASSISTANT: A" (" A") or
        "<|CHATBOT_TOKEN|>A" ("A"); a template that cannot say gets " A".
        """
        if prompt[-1:].isspace():
            return ""
        if self.chat_template is not None:
            answered = self.prompt.messages(probe) + [
                {"role": "assistant", "content": [{"type": "text", "text": "A"}]}]
            try:
                text = self.apply_chat_template(answered, add_generation_prompt=False)
            except Exception as err:  # any template failure means "cannot say"
                log.debug("model %r: chat template cannot render an answer: %s", self.name, err)
            else:
                if text.startswith(prompt + "A"):
                    return ""
        return " "

    def check_samples(self, task: str, samples: Sequence[Sample]) -> None:
        """Refuse a task the checkpoint cannot score: more options than it has single-token
        letters, or prompts whose words its tokenizer mostly maps to the unknown token
        (warned above `unknown_words_warn`, refused above `unknown_words_refuse`)."""
        needed = max((len(s.options) for s in samples), default=0)
        if needed > len(self.letter_ids):
            offered = len(self.letter_ids)
            raise AnswerTokenError(
                f"model {self.name!r} cannot score task {task!r}: its questions have up to "
                f"{needed} options, but the tokenizer offers only {offered} option letters "
                f"(A-{OPTION_LETTERS[offered - 1]}) as single tokens: {self._letters_end}")
        with self._tokenizer_lock:
            found = vocabulary.coverage(self.tokenizer, vocabulary.probe_samples(samples))
        if found is None or found.share <= self.unknown_words_warn:
            return
        what = (f"model {self.name!r} maps {found.share:.0%} of the words of task {task!r} "
                f"({found.unknown} of {found.words} in {found.prompts} prompts) to "
                f"its unknown token {self.tokenizer.unk_token!r}, e.g. "
                f"{', '.join(repr(w) for w in found.examples)}")
        if found.share > self.unknown_words_refuse:
            raise VocabularyError(
                f"{what}: its scores would not mean much; use a checkpoint whose tokenizer "
                "covers the task's language, or raise model.unknown_words_refuse to score it "
                "anyway")
        log.warning("%s; scores on it are doubtful (model.unknown_words_warn=%s)", what,
                    self.unknown_words_warn)

    def option_token_ids(self, count: int) -> tuple[int, ...]:
        """The one place the letters' token ids are read (scoring, attacks, training)."""
        if count > len(self.letter_ids):
            raise AnswerTokenError(
                f"model {self.name!r}: {count} option letters needed, but the tokenizer offers "
                f"only {len(self.letter_ids)} as single tokens: {self._letters_end}")
        return self.letter_ids[:count]

    # -- scoring -------------------------------------------------------------------------
    def encode(self, samples: Sequence[Sample]) -> BatchFeature:
        """Left-padded model inputs on the model's device; images as one list per sample."""
        return self._encode_on_host(samples).to(self.device)

    def prepare(self, samples: Sequence[Sample]) -> PreparedBatch:
        """`encode` on the host, with its images' key: safe to run beside a forward pass."""
        inputs = self._encode_on_host(samples)
        key = image_inputs_key(inputs) if self.image_encoder is not None else None
        return PreparedBatch(inputs, key)

    def _encode_on_host(self, samples: Sequence[Sample], suffix: str = "") -> BatchFeature:
        with self._tokenizer_lock:
            return self._encode_tokens_and_images(list(samples), suffix)

    def _encode_tokens_and_images(self, samples: list[Sample], suffix: str = "") -> BatchFeature:
        texts = [self.render(s, suffix) for s in samples]
        add_special = {self._adds_special_tokens(t) for t in texts}
        if len(add_special) != 1:
            raise ValueError("a batch mixes prompts with and without a BOS token: "
                             f"{[s.id for s in samples]}")
        add_special_tokens = add_special.pop()
        with_image = [i for i, s in enumerate(samples) if s.image is not None]
        text_only = [i for i, s in enumerate(samples) if s.image is None]
        if self.encode_text_only_apart and with_image and text_only:
            parts = [(with_image, self._encode_images([samples[i] for i in with_image],
                                                      add_special_tokens, suffix)),
                     (text_only, self._encode_text_only([texts[i] for i in text_only],
                                                        add_special_tokens))]
            encoding = merge_left_padded(parts, len(samples), self.tokenizer.pad_token_id)
        elif with_image:
            encoding = self._encode_images(samples, add_special_tokens, suffix)
        elif self.encode_text_only_apart:
            encoding = self._encode_text_only(texts, add_special_tokens)
        else:
            encoding = self.processor(text=texts, padding=True, return_tensors="pt",
                                      add_special_tokens=add_special_tokens)
        return left_align(encoding)

    def _encode_images(self, samples: Sequence[Sample], add_special_tokens: bool,
                       suffix: str = "") -> BatchFeature:
        """The processor on the batch, images nested per sample (`[[img], [], [img]]`)."""
        images = [[s.image.convert("RGB")] if s.image is not None else [] for s in samples]
        encoding = self.processor(text=[self.processor_text(s, suffix) for s in samples],
                                  images=images,
                                  padding=True, return_tensors="pt",
                                  add_special_tokens=add_special_tokens)
        encoding.pop("labels", None)  # PaliGemma's processor adds training labels
        return encoding

    def _encode_text_only(self, texts: Sequence[str], add_special_tokens: bool) -> BatchFeature:
        """The tokenizer alone, for families whose processor cannot take a text-only prompt."""
        enc = self.tokenizer(list(texts), padding=True, return_tensors="pt",
                             add_special_tokens=add_special_tokens)
        enc = {k: v for k, v in enc.items() if k in TOKEN_KEYS}
        # token type 0 = the prompt prefix (PaliGemma attends to it bidirectionally): the
        # same ids the processor gives a prompt with an image, alone or in a mixed batch.
        if "token_type_ids" in getattr(self.processor, "model_input_names", ()):
            enc.setdefault("token_type_ids", torch.zeros_like(enc["input_ids"]))
        return BatchFeature(enc)

    @cached_property
    def image_encoder(self) -> Callable[..., object] | None:
        """The model's own image encoder, where its forward takes the encoder's output.

        transformers' `generate` encodes images once through `base_model.get_image_features`
        and passes `mm_encoder_outputs`; scoring uses the same pair to encode a batch's
        images once for all the conditions that change only its text.
        """
        forward = inspect.signature(self.model.forward).parameters
        if (not self.reuses_image_features or "mm_encoder_outputs" not in forward
                or "image" not in getattr(self.model, "input_modalities", ())):
            return None
        return getattr(self.model.base_model, "get_image_features", None)

    def _with_image_features(self, inputs: BatchFeature, image_key: str | None) -> BatchFeature:
        """`inputs` plus the image encoder's output: reused if a batch had the same images."""
        if image_key is None or self.image_encoder is None:
            return inputs
        if self._image_features is not None and self._image_features[0] == image_key:
            features = self._image_features[1]
            self.image_feature_reuses += 1
        else:
            self._image_features = None  # freed before the next encoding is made
            wanted = inspect.signature(self.image_encoder).parameters
            features = self.image_encoder(**{k: v for k, v in inputs.items() if k in wanted},
                                          return_dict=True)
            self._image_features = (image_key, features)
        # the forward refuses pixels beside their encoding; grids and sizes it still reads
        # (Qwen2-VL's rope positions come from `image_grid_thw`)
        rest = {k: v for k, v in inputs.items() if k not in PIXEL_KEYS}
        return BatchFeature({**rest, "mm_encoder_outputs": {"image": features}})

    @torch.no_grad()
    def _probs(self, samples: Sequence[Sample], prepared: PreparedBatch | None
               ) -> list[np.ndarray]:
        if prepared is None:  # a direct call: nothing is reused (the weights may have changed)
            prepared = PreparedBatch(self._encode_on_host(samples), image_key=None)
        # a copy is moved, so the prepared batch keeps no device memory (OOM retries)
        inputs = BatchFeature(dict(prepared.inputs)).to(self.device)
        inputs = self._with_image_features(inputs, prepared.image_key)
        logits = self.answer_logits(inputs)
        return option_distributions(self.letter_logits(logits, samples), samples)

    def option_probs(self, samples: Sequence[Sample], prepared: PreparedBatch | None = None
                     ) -> list[np.ndarray]:
        """Option distributions; a batch that runs out of GPU memory is split in halves.

        Each sample's numbers do not depend on its batch, so splitting changes nothing but
        speed; `oom_backoffs` counts the splits. `prepared`: this batch's `prepare` output.
        """
        samples = list(samples)
        for sample in samples:
            if len(sample.options) > len(self.letter_ids):
                raise AnswerTokenError(
                    f"model {self.name!r}: sample {sample.id!r} has {len(sample.options)} "
                    f"options, the tokenizer offers {len(self.letter_ids)} option letters as "
                    f"single tokens: {self._letters_end}")
        try:
            return self._probs(samples, prepared)
        except OOM_ERRORS as err:
            if len(samples) == 1:
                raise CheckpointError(
                    f"model {self.name!r} ran out of memory on sample {samples[0].id!r} alone "
                    f"({self.prompt_length(samples[0])} prompt tokens); use a smaller dtype, "
                    "model.device_map=auto, or smaller images") from err
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        # Retried outside the except block, so the failed attempt's tensors are freed first.
        self.oom_backoffs += 1
        self.drop_reused_inputs()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        half = len(samples) // 2
        log.warning("model %r: out of memory on a batch of %d samples (first %r: %s); "
                    "retrying as %d + %d (back-off #%d)", self.name, len(samples),
                    samples[0].id, reason, half, len(samples) - half, self.oom_backoffs)
        return self.option_probs(samples[:half]) + self.option_probs(samples[half:])

    def describe(self) -> dict:
        return {"name": self.name, **self.provenance, "device": str(self.device),
                "adapter": type(self).__name__, "class": type(self.model).__name__,
                "letter_token_ids": list(self.letter_ids[:6])}
