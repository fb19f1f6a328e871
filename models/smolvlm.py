"""SmolVLM (1 and 2): Idefics3's architecture with a processor that also handles video.

`SmolVLMProcessor.apply_chat_template` reads video settings even for an image prompt, which
fails where the video processor could not be loaded (no torchvision). The template itself
only writes text and `<image>` placeholders, so the tokenizer renders it identically.
"""

from __future__ import annotations

from .hf import HFModelAdapter


class SmolVLMAdapter(HFModelAdapter):
    """SmolVLM: the chat template rendered by the tokenizer, not the processor."""

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True
                            ) -> str:
        return self.tokenizer.apply_chat_template(
            messages, chat_template=self.chat_template,
            add_generation_prompt=add_generation_prompt, tokenize=False)
