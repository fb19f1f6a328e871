"""InstructBLIP (decoder-only, e.g. Vicuna): no chat template; the model requires an image.

Text-only samples: InstructBLIP's only image channel is the Q-Former's query tokens placed
before the prompt. Without an image there is nothing for them to carry, so a text-only sample
is scored by the language model alone on the same prompt, with no query tokens: an explicit
choice (recorded in `describe()`), not a blank image slipped in. In a mixed batch the image
samples get their query tokens and the text-only ones do not; both are left-padded together.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import AddedToken, BatchFeature, InstructBlipForConditionalGeneration

from mibench.records import Sample

from .base import Inputs, WhiteBoxError
from .hf import HFModelAdapter

TEXT_ONLY = "language model alone, no query tokens"


class InstructBlipAdapter(HFModelAdapter):
    """InstructBLIP: prompt format instead of a chat template; text-only via the LM alone."""

    model_class = InstructBlipForConditionalGeneration
    # LAVIS prompts the Vicuna models with the bare instruction; the answer cue keeps the
    # letter at the next position (" A" after ":").
    default_prompt_format = "{prompt}\nAnswer:"
    # The processor prefixes query tokens to every prompt once any image is in the call.
    encode_text_only_apart = True
    # The Q-Former encodes each image together with its prompt: no two conditions share it.
    reuses_image_features = False

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.provenance["text_only"] = TEXT_ONLY
        # A tokenizer reloaded with `image_token` among its special tokens hands the processor
        # a plain string, where its __call__ expects an AddedToken (transformers 5.x).
        if isinstance(getattr(self.processor, "image_token", None), str):
            self.processor.image_token = AddedToken(self.processor.image_token,
                                                    normalized=False, special=True)

    def _encode_images(self, samples: Sequence[Sample], add_special_tokens: bool,
                       suffix: str = "") -> BatchFeature:
        """The Q-Former is BERT-like, with absolute positions: its copy of the prompt must
        start at position 0 whatever the batch, so its padding goes to the right (the
        processor pads it on the language tokenizer's side, left)."""
        encoding = super()._encode_images(samples, add_special_tokens, suffix)
        mask = encoding["qformer_attention_mask"]
        order = torch.argsort(1 - mask.to(torch.int8), dim=1, stable=True)
        for key in ("qformer_input_ids", "qformer_attention_mask"):
            encoding[key] = torch.gather(encoding[key], 1, order)
        return encoding

    def generation_network(self, inputs: BatchFeature) -> tuple[torch.nn.Module, BatchFeature]:
        """A batch without images is answered by the language model alone, as it is scored."""
        if "pixel_values" in inputs:
            return super().generation_network(inputs)
        return self.model.language_model, BatchFeature(
            {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask")})

    def answer_logits(self, inputs: Inputs, **options) -> torch.Tensor:
        """A batch without images runs the language model alone (any `network` wrapper is
        bypassed there: the language model is not reachable through one)."""
        if "pixel_values" in inputs or options.get("pixels") is not None:
            return super().answer_logits(inputs, **options)
        if options.get("embeds") is not None or options.get("shift") is not None:
            raise WhiteBoxError(f"model {self.name!r}: text-only samples run the language "
                                "model alone, whose input embeddings are not replayed")
        lm_inputs = {k: v for k, v in inputs.items()
                     if k in ("input_ids", "attention_mask", "inputs_embeds")}
        logits = self.model.language_model(**lm_inputs).logits[:, -1, :]
        return logits if logits.dtype == torch.float64 else logits.float()
