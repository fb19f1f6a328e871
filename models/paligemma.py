"""PaliGemma (1 and 2): no chat template; the processor writes `<image>`*n + BOS + prompt + "\\n"
and refuses a call without an image.

The prompt the model sees is therefore BOS + question block + "\\n", the answer letter comes
bare ("A") after the newline, and text-only samples are tokenized without the processor (same
text, no image tokens, all in the bidirectional prefix: token_type_ids 0).
"""

from __future__ import annotations

from transformers import PaliGemmaForConditionalGeneration

from mibench.records import Sample

from .hf import HFModelAdapter


class PaliGemmaAdapter(HFModelAdapter):
    """PaliGemma: the processor's own prompt layout; text-only samples tokenized directly."""

    model_class = PaliGemmaForConditionalGeneration
    default_prompt_format = "{bos}{prompt}\n"
    encode_text_only_apart = True

    def processor_text(self, sample: Sample) -> str:
        """The rendered prompt less BOS and the final "\\n", which the processor adds back."""
        text, bos = self.render(sample), self.tokenizer.bos_token or ""
        text = text[len(bos):] if bos and text.startswith(bos) else text
        text = text[:-1] if text.endswith("\n") else text
        return self.processor.image_token + text  # one placeholder: the sample's one image
