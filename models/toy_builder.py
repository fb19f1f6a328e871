"""Builds the embedded toy MLLM: a tiny LLaVA (CLIP vision + Llama) with a word-level tokenizer.

Everything is built offline from transformers' own classes, so the toy is a real checkpoint
that `AutoProcessor` / `AutoModelForImageTextToText` reload like any hub model. Tests use the
same builder with random weights; `scripts/train_toy_model.py` trains it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

PAD, UNK, BOS, EOS, IMAGE = "<pad>", "<unk>", "<s>", "</s>", "<image>"
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS, IMAGE)

# A LLaVA-1.5-style template: the generation prompt ends in "ASSISTANT:" so the answer letter
# comes as " A" (here the word-level tokenizer drops the space, which the adapter checks).
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: {% else %}ASSISTANT: {% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>{{ '\\n' }}"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}"
    "{% endif %}{% endfor %}{% endif %}"
    "{% if message['role'] != 'user' %}{{ eos_token }}{% endif %}{{ '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

_WORD = re.compile(r"\w+|[^\w\s]")


def words_of(texts: Iterable[str]) -> list[str]:
    """The word-level vocabulary of some texts, split as the toy pre-tokenizer splits them."""
    return sorted({w for text in texts for w in _WORD.findall(text)})


@dataclass(frozen=True)
class ToyModelSize:
    """The toy's architecture; defaults give about 1.1 M parameters."""

    image_size: int = 32
    patch_size: int = 8
    vision_hidden: int = 128
    vision_layers: int = 3
    text_hidden: int = 128
    text_layers: int = 4
    heads: int = 4
    intermediate: int = 256


def build_tokenizer(words: Iterable[str]) -> PreTrainedTokenizerFast:
    """A cased word-level tokenizer; `<image>` is a special token so it is never split."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for word in sorted(set(words) - set(SPECIAL_TOKENS)):
        vocab[word] = len(vocab)
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS, eos_token=EOS, unk_token=UNK, pad_token=PAD,
        extra_special_tokens={"image_token": IMAGE},
        padding_side="left",
        chat_template=CHAT_TEMPLATE,
    )
    return tokenizer


def build_processor(words: Iterable[str], size: ToyModelSize = ToyModelSize()) -> LlavaProcessor:
    """A real LlavaProcessor around the toy tokenizer and a CLIP image processor."""
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": size.image_size},
        crop_size={"height": size.image_size, "width": size.image_size},
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=build_tokenizer(words),
        patch_size=size.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS token, dropped by the "default" strategy
        chat_template=CHAT_TEMPLATE,
    )


def build_model(
    processor: LlavaProcessor, size: ToyModelSize = ToyModelSize(), seed: int = 0
) -> LlavaForConditionalGeneration:
    """A randomly initialised tiny LLaVA whose vocabulary matches `processor`."""
    tokenizer = processor.tokenizer
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            image_size=size.image_size, patch_size=size.patch_size,
            hidden_size=size.vision_hidden, num_hidden_layers=size.vision_layers,
            num_attention_heads=size.heads, intermediate_size=size.intermediate,
        ),
        text_config=LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=size.text_hidden,
            num_hidden_layers=size.text_layers, num_attention_heads=size.heads,
            num_key_value_heads=size.heads, intermediate_size=size.intermediate,
            max_position_embeddings=512, tie_word_embeddings=False,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE),
        image_seq_length=(size.image_size // size.patch_size) ** 2,
        vision_feature_layer=-1,  # the default -2 would drop the last of 3 layers
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return LlavaForConditionalGeneration(config).eval()
