"""PaliGemma (1 and 2): the processor writes `<image>`*n + BOS + prompt + "\\n" and refuses a
call without an image.

The prompt the model sees is therefore BOS + question block + "\\n", with or without a chat
template (recent checkpoints carry one that writes `<image>` and the text): the template's
text, less its image placeholders and BOS, is the question block. The answer letter comes
bare ("A") after the newline. Text-only samples are tokenized without the processor (same
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

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True
                            ) -> str:
        """The template's text as the model sees it: BOS + text + "\\n", no image token
        (`processor_text` puts exactly one back, for a sample with an image)."""
        text = super().apply_chat_template(messages, add_generation_prompt)
        return f"{self._bos}{self._core(text)}\n"

    def processor_text(self, sample: Sample, suffix: str = "") -> str:
        """The rendered prompt less BOS and the final "\\n", which the processor adds back,
        after one image placeholder: the sample's one image."""
        return self.processor.image_token + self._core(self.render(sample, suffix))

    @property
    def _bos(self) -> str:
        return self.tokenizer.bos_token or ""

    def _core(self, text: str) -> str:
        """`text` without image placeholders, a leading BOS and a final newline."""
        text = text.replace(self.processor.image_token, "")
        text = text[len(self._bos):] if self._bos and text.startswith(self._bos) else text
        return text[:-1] if text.endswith("\n") else text
