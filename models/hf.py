"""The generic adapter for any `AutoModelForImageTextToText` checkpoint with a chat template."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    BatchFeature,
    PreTrainedModel,
    ProcessorMixin,
)

from mibench.prompts import chat_messages
from mibench.records import OPTION_LETTERS, Sample

from .base import ModelAdapter

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
          "float64": torch.float64}


class AnswerTokenError(RuntimeError):
    """The tokenizer cannot represent an option letter as one token at the answer position."""


class HFModelAdapter(ModelAdapter):
    """Loads a checkpoint by hub id or local directory and scores option letters.

    Prompts go through the processor's chat template; batches are left-padded so the answer
    position is the last one for every sample; the letter token ids are checked at load time.
    """

    def __init__(self, model: PreTrainedModel, processor: ProcessorMixin, name: str,
                 provenance: dict | None = None) -> None:
        self.model, self.processor, self.name = model.eval(), processor, name
        self.provenance = provenance or {}
        self.device = model.device
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.letter_ids = self._resolve_letter_ids()

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
    ) -> HFModelAdapter:
        """Load by hub id or local directory; `revision` pins a hub commit, tag or branch."""
        if dtype not in DTYPES:
            raise ValueError(f"model.dtype={dtype!r} is not one of {sorted(DTYPES)}")
        path = str(path)
        device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        load = {"revision": revision, "trust_remote_code": trust_remote_code}
        extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
        processor = AutoProcessor.from_pretrained(path, **load)
        model = AutoModelForImageTextToText.from_pretrained(
            path, dtype=DTYPES[dtype], **load, **extra
        ).to(device)
        provenance = {"path": path, "revision": revision, "dtype": dtype,
                      "commit": getattr(model.config, "_commit_hash", None),
                      "trust_remote_code": trust_remote_code,
                      "attn_implementation": attn_implementation}
        return cls(model, processor, name or path.rstrip("/").split("/")[-1], provenance)

    # -- prompts -------------------------------------------------------------------------
    def render(self, sample: Sample) -> str:
        """The full prompt text, chat template and generation prompt included."""
        return self.processor.apply_chat_template(
            chat_messages(sample), add_generation_prompt=True, tokenize=False
        )

    def _adds_special_tokens(self, text: str) -> bool:
        """False when the template already wrote BOS (tokenizing again would double it)."""
        bos = self.tokenizer.bos_token
        return not (bos and text.startswith(bos))

    def _token_ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=self._adds_special_tokens(text)).input_ids

    def prompt_length(self, sample: Sample) -> int:
        return len(self._token_ids(self.render(sample)))

    def _resolve_letter_ids(self) -> tuple[int, ...]:
        """Token id of each letter as the model would emit it right after the prompt.

        After a space or newline the letter comes bare ("A"), after anything else with a
        leading space (" A"); a form that merges with the prompt or splits into several
        tokens cannot be scored by one forward pass, so it is refused here, not guessed.
        """
        probe = Sample(id="letter-probe", question="Which letter?", options=("x", "y"),
                       answer=0, category="text_heavy")
        prompt = self.render(probe)
        base = self._token_ids(prompt)
        prefix = "" if prompt[-1:].isspace() else " "
        ids = []
        for letter in OPTION_LETTERS:
            full = self._token_ids(prompt + prefix + letter)
            if full[: len(base)] != base or len(full) != len(base) + 1:
                extra = self.tokenizer.convert_ids_to_tokens(full[len(base) - 1:])
                raise AnswerTokenError(
                    f"model {self.name!r}: option letter {prefix + letter!r} after the "
                    f"generation prompt is not one token of its own (tokens {extra}); "
                    "this checkpoint needs an adapter that scores multi-token answers"
                )
            ids.append(full[-1])
        if len(set(ids)) != len(ids):
            raise AnswerTokenError(f"model {self.name!r}: option letters share token ids {ids}")
        return tuple(ids)

    # -- scoring -------------------------------------------------------------------------
    def encode(self, samples: Sequence[Sample]) -> BatchFeature:
        """Left-padded model inputs; images as one list per sample (text-only ones empty)."""
        texts = [self.render(s) for s in samples]
        add_special = {self._adds_special_tokens(t) for t in texts}
        if len(add_special) != 1:
            raise ValueError("a batch mixes prompts with and without a BOS token")
        images = [[s.image.convert("RGB")] if s.image is not None else [] for s in samples]
        has_images = any(images)
        return self.processor(
            text=texts,
            images=images if has_images else None,
            padding=True,
            return_tensors="pt",
            add_special_tokens=add_special.pop(),
        ).to(self.device)

    def answer_logits(self, inputs: BatchFeature) -> torch.Tensor:
        """Logits over the vocabulary at the answer position, (batch, vocab), in float32."""
        return self.model(**inputs).logits[:, -1, :].float()

    @torch.no_grad()
    def option_probs(self, samples: Sequence[Sample]) -> list[np.ndarray]:
        logits = self.answer_logits(self.encode(samples))
        out = []
        for row, sample in zip(logits, samples):
            letters = torch.tensor(self.letter_ids[: len(sample.options)], device=row.device)
            out.append(torch.softmax(row[letters].double(), dim=-1).cpu().numpy())
        return out

    def describe(self) -> dict:
        return {"name": self.name, **self.provenance, "device": str(self.device),
                "class": type(self.model).__name__,
                "letter_token_ids": list(self.letter_ids[:6])}
