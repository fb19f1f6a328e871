"""Tiny random checkpoints of each supported model family, built offline.

Each builder makes a real processor of the family (a BPE tokenizer trained here with the
`tokenizers` library, in the family's style: sentencepiece-like `▁A` or byte-level `ĠA`; the
family's PIL image processor; a chat template shaped like the hub one), a model from the
family's own config classes with a few thousand parameters, and saves both to a directory
that the suite loads like a hub checkpoint. Sizes follow transformers' own model tests.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from mibench.models.hf_processor import image_only_processor_class
from mibench.prompts import ANSWER_INSTRUCTION
from mibench.records import OPTION_LETTERS

# The words the test prompts use; the letters in both forms so BPE learns "▁A"/"ĠA".
CORPUS = [
    "what shape is in the image ? what colour is it ? which letter ? x y",
    "square circle triangle red green blue anna has a box . what colour ?",
    "USER: ASSISTANT: User: Assistant: system user assistant model You are a helpful assistant.",
    "[INST] [/INST] Answer: Question:", ANSWER_INSTRUCTION,
] + [" ".join(OPTION_LETTERS) + " .\n" + "\n".join(OPTION_LETTERS) + "\n"] * 30

TINY_TEXT = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)


@dataclass
class Family:
    """A tiny checkpoint of one family, and what the suite should find in it."""

    name: str
    adapter: str                # "module:Class", as the family's YAML _target_ names it
    letter_form: str            # how the answer letter follows the prompt: " A" or "A"
    path: str = ""
    load_kwargs: dict = field(default_factory=dict)
    sizes: tuple[tuple[int, int], ...] = ((16, 16), (16, 16), (16, 16))  # image (w, h) cycle
    # PGD attacks (class names) that refuse this family by name, as not supported yet
    refused_attacks: frozenset[str] = frozenset()


def train_tokenizer(style: str, special: list[str], *, bos: str | None, eos: str, pad: str,
                    unk: str | None = None, add_bos: bool = False, chat_template: str | None = None,
                    extra_special_tokens: dict | None = None, split_newlines: bool = True,
                    **kwargs) -> PreTrainedTokenizerFast:
    """A small BPE tokenizer: `style` "sp" (sentencepiece-like, ▁ for spaces, as Llama,
    Mistral, Gemma) or "byte" (byte-level, Ġ for spaces, as Qwen, SmolLM).
    `split_newlines=False` lets "sp" merge a newline with what follows ("\nA")."""
    core = Tokenizer(models.BPE(unk_token=unk))
    if style == "sp":
        # sentencepiece never merges across a newline; neither does this one
        core.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split("\n", "isolated")] * split_newlines
            + [pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")])
        core.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
        alphabet = []
    else:
        core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        core.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    special = list(dict.fromkeys([t for t in (unk, pad, bos, eos) if t] + special))
    trainer = trainers.BpeTrainer(vocab_size=1000, special_tokens=special,
                                  initial_alphabet=alphabet, show_progress=False)
    core.train_from_iterator(CORPUS, trainer=trainer)
    if add_bos:
        core.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
            special_tokens=[(bos, core.token_to_id(bos))])
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token=bos, eos_token=eos, pad_token=pad, unk_token=unk,
        chat_template=chat_template, extra_special_tokens=extra_special_tokens or {}, **kwargs)


def _ids(tokenizer, *tokens: str) -> list[int]:
    return [tokenizer.convert_tokens_to_ids(t) for t in tokens]


def _text_config(cls, tokenizer, **overrides):
    return cls(vocab_size=len(tokenizer) + 5,  # hub models pad their vocab too
               pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
               bos_token_id=tokenizer.bos_token_id, **{**TINY_TEXT, **overrides})


def _save(model, processor, path: Path) -> str:
    processor.save_pretrained(path)
    model.save_pretrained(path)
    return str(path)


def _clip(**kw):
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2,
                            num_attention_heads=4, intermediate_size=48, **kw)


def _siglip(**kw):
    from transformers import SiglipVisionConfig

    return SiglipVisionConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2,
                              num_attention_heads=4, intermediate_size=48, **kw)


# -- LLaVA-1.5: Llama tokenizer (BOS added by the tokenizer), "USER: ... ASSISTANT:" ------
LLAVA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}"
    "{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' ' }}{% endfor %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}")


def build_llava(path: Path) -> None:
    from transformers import (
        CLIPImageProcessorPil,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tok = train_tokenizer("sp", ["<image>"], bos="<s>", eos="</s>", pad="<pad>", unk="<unk>",
                          add_bos=True, extra_special_tokens={"image_token": "<image>"})
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(size={"shortest_edge": 16},
                                              crop_size={"height": 16, "width": 16}),
        tokenizer=tok, patch_size=4, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, chat_template=LLAVA_TEMPLATE)
    config = LlavaConfig(vision_config=_clip(), text_config=_text_config(LlamaConfig, tok),
                         image_token_index=tok.convert_tokens_to_ids("<image>"),
                         image_seq_length=16, vision_feature_layer=-1,
                         vision_feature_select_strategy="default")
    _save(LlavaForConditionalGeneration(config), processor, path)


# -- LLaVA-NeXT (Mistral): anyres tiling, "[INST] ... [/INST]" ------------------------------
LLAVA_NEXT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}{{ '[INST] ' }}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}"
    "{{ '<image>\n' }}{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{{ ' [/INST]' }}{% endif %}{% endfor %}")
PINPOINTS = [[16, 32], [32, 16], [32, 32]]


def build_llava_next(path: Path) -> None:
    from transformers import (
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessorPil,
        LlavaNextProcessor,
        MistralConfig,
    )

    tok = train_tokenizer("sp", ["<image>"], bos="<s>", eos="</s>", pad="<pad>", unk="<unk>",
                          add_bos=True, extra_special_tokens={"image_token": "<image>"})
    processor = LlavaNextProcessor(
        image_processor=LlavaNextImageProcessorPil(
            size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16},
            image_grid_pinpoints=PINPOINTS),
        tokenizer=tok, patch_size=4, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, chat_template=LLAVA_NEXT_TEMPLATE)
    config = LlavaNextConfig(vision_config=_clip(), text_config=_text_config(MistralConfig, tok),
                             image_token_index=tok.convert_tokens_to_ids("<image>"),
                             image_grid_pinpoints=PINPOINTS, vision_feature_layer=-1,
                             vision_feature_select_strategy="default")
    _save(LlavaNextForConditionalGeneration(config), processor, path)


# -- InstructBLIP (Vicuna): no chat template, a Q-Former with its own BERT-like tokenizer ----
def build_instructblip(path: Path) -> None:
    from transformers import (
        BlipImageProcessorPil,
        InstructBlipConfig,
        InstructBlipForConditionalGeneration,
        InstructBlipProcessor,
        LlamaConfig,
    )

    tok = train_tokenizer("sp", [], bos="<s>", eos="</s>", pad="<pad>", unk="<unk>",
                          add_bos=True)  # the processor adds <image> itself, as on the hub
    qtok = train_tokenizer("sp", ["[CLS]", "[SEP]"], bos=None, eos="[SEP]", pad="[PAD]",
                           unk="[UNK]")
    processor = InstructBlipProcessor(
        image_processor=BlipImageProcessorPil(size={"height": 16, "width": 16}),
        tokenizer=tok, qformer_tokenizer=qtok, num_query_tokens=4)
    config = InstructBlipConfig(
        # the vision default initializer_range=1e-10 leaves pixel gradients near 1e-9
        vision_config=dict(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2,
                           num_attention_heads=4, intermediate_size=48,
                           initializer_range=0.02),
        qformer_config=dict(vocab_size=len(qtok), hidden_size=32, num_hidden_layers=2,
                            num_attention_heads=4, intermediate_size=48, encoder_hidden_size=32,
                            pad_token_id=qtok.pad_token_id, max_position_embeddings=128),
        text_config=_text_config(LlamaConfig, tok).to_dict(), num_query_tokens=4,
        image_token_index=tok.convert_tokens_to_ids("<image>"))
    torch.manual_seed(0)
    model = InstructBlipForConditionalGeneration(config)
    torch.nn.init.normal_(model.query_tokens, std=1.0)  # fresh ones are zeros
    _save(model, processor, path)


# -- Qwen2-VL / Qwen2.5-VL: byte-level BPE, dynamic resolution, M-RoPE, template ends "\n" --
QWEN_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>",
                "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]


def _qwen_parts():
    from transformers import Qwen2VLImageProcessorPil

    tok = train_tokenizer("byte", QWEN_SPECIAL, bos=None, eos="<|im_end|>", pad="<|endoftext|>",
                          extra_special_tokens={"image_token": "<|image_pad|>",
                                                "video_token": "<|video_pad|>"})
    image_processor = Qwen2VLImageProcessorPil(patch_size=4, merge_size=2, temporal_patch_size=2,
                                               min_pixels=8 * 8, max_pixels=32 * 32)
    ids = dict(zip(("image_token_id", "video_token_id", "vision_start_token_id",
                    "vision_end_token_id"),
                   _ids(tok, "<|image_pad|>", "<|video_pad|>", "<|vision_start|>",
                        "<|vision_end|>")))
    text = dict(rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                 "mrope_section": [2, 1, 1]})
    return tok, image_processor, ids, text


def build_qwen2_vl(path: Path) -> None:
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor

    tok, image_processor, ids, text = _qwen_parts()
    processor = image_only_processor_class(Qwen2VLProcessor)(
        image_processor=image_processor, tokenizer=tok, chat_template=QWEN_TEMPLATE)
    config = Qwen2VLConfig(
        text_config={**TINY_TEXT, **text, "vocab_size": len(tok) + 5,
                     "pad_token_id": tok.pad_token_id, "eos_token_id": tok.eos_token_id,
                     "bos_token_id": None},
        vision_config=dict(depth=2, embed_dim=32, hidden_size=32, num_heads=4, mlp_ratio=2,
                           patch_size=4, spatial_merge_size=2, temporal_patch_size=2),
        **ids)
    _save(Qwen2VLForConditionalGeneration(config), processor, path)


def build_qwen2_5_vl(path: Path) -> None:
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
    )

    tok, image_processor, ids, text = _qwen_parts()
    processor = image_only_processor_class(Qwen2_5_VLProcessor)(
        image_processor=image_processor, tokenizer=tok, chat_template=QWEN_TEMPLATE)
    config = Qwen2_5_VLConfig(
        text_config={**TINY_TEXT, **text, "vocab_size": len(tok) + 5,
                     "pad_token_id": tok.pad_token_id, "eos_token_id": tok.eos_token_id,
                     "bos_token_id": None},
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=48, num_heads=4,
                           out_hidden_size=32, patch_size=4, spatial_merge_size=2,
                           temporal_patch_size=2, window_size=16, fullatt_block_indexes=[1]),
        **ids)
    _save(Qwen2_5_VLForConditionalGeneration(config), processor, path)


# -- InternVL (transformers-native "-hf" form): Qwen2 text, <img><IMG_CONTEXT>*n</img> ------
INTERNVL_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}"
    "<IMG_CONTEXT>\n{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def build_internvl(path: Path) -> None:
    from transformers import (
        GotOcr2ImageProcessorPil,
        InternVLConfig,
        InternVLForConditionalGeneration,
        InternVLProcessor,
        Qwen2Config,
    )

    marks = {"start_image_token": "<img>", "end_image_token": "</img>",
             "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"}
    tok = train_tokenizer("byte", ["<|endoftext|>", "<|im_start|>", "<|im_end|>",
                                   *marks.values()],
                          bos=None, eos="<|im_end|>", pad="<|endoftext|>",
                          extra_special_tokens=marks)
    processor = image_only_processor_class(InternVLProcessor)(
        image_processor=GotOcr2ImageProcessorPil(size={"height": 16, "width": 16},
                                                 crop_to_patches=False),
        tokenizer=tok, image_seq_length=4, chat_template=INTERNVL_TEMPLATE)
    config = InternVLConfig(
        vision_config=dict(image_size=[16, 16], patch_size=[4, 4], hidden_size=32,
                           num_hidden_layers=2, num_attention_heads=4, intermediate_size=48),
        text_config=_text_config(Qwen2Config, tok).to_dict(),
        image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"), image_seq_length=4,
        downsample_ratio=0.5, vision_feature_layer=-1)
    _save(InternVLForConditionalGeneration(config), processor, path)


# -- Idefics3 / SmolVLM: image splitting, the template itself writes BOS ---------------------
IDEFICS3_TEMPLATE = (
    "<|begin_of_text|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}")
IDEFICS3_SPECIAL = ["<|begin_of_text|>", "<|end_of_text|>", "<fake_token_around_image>",
                    "<image>", "<end_of_utterance>", "<global-img>",
                    *[f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]]


def build_idefics3(path: Path) -> None:
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessorPil,
        Idefics3Processor,
        LlamaConfig,
    )

    tok = train_tokenizer("byte", IDEFICS3_SPECIAL, bos="<|begin_of_text|>",
                          eos="<end_of_utterance>", pad="<|end_of_text|>", add_bos=True)
    processor = Idefics3Processor(
        image_processor=Idefics3ImageProcessorPil(size={"longest_edge": 32},
                                                  max_image_size={"longest_edge": 16}),
        tokenizer=tok, image_seq_len=4, chat_template=IDEFICS3_TEMPLATE)
    config = Idefics3Config(
        vision_config=dict(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2,
                           num_attention_heads=4, intermediate_size=48),
        text_config=_text_config(LlamaConfig, tok).to_dict(),
        image_token_id=tok.convert_tokens_to_ids("<image>"), scale_factor=2)
    _save(Idefics3ForConditionalGeneration(config), processor, path)


SMOLVLM_TEMPLATE = IDEFICS3_TEMPLATE.replace("<|begin_of_text|>", "<|im_start|>")


def build_smolvlm(path: Path) -> None:
    from transformers import (
        LlamaConfig,
        SmolVLMConfig,
        SmolVLMForConditionalGeneration,
        SmolVLMImageProcessorPil,
        SmolVLMProcessor,
    )

    marks = {"fake_image_token": "<fake_token_around_image>", "image_token": "<image>",
             "end_of_utterance_token": "<end_of_utterance>", "global_image_token": "<global-img>",
             "video_token": "<video>"}
    special = ["<|im_start|>", "<|endoftext|>", *marks.values(), *IDEFICS3_SPECIAL[6:]]
    tok = train_tokenizer("byte", special, bos="<|im_start|>", eos="<end_of_utterance>",
                          pad="<|endoftext|>", extra_special_tokens=marks)
    processor = image_only_processor_class(SmolVLMProcessor)(
        image_processor=SmolVLMImageProcessorPil(size={"longest_edge": 32},
                                                 max_image_size={"longest_edge": 16}),
        tokenizer=tok, image_seq_len=4, chat_template=SMOLVLM_TEMPLATE)
    config = SmolVLMConfig(
        vision_config=dict(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2,
                           num_attention_heads=4, intermediate_size=48),
        text_config=_text_config(LlamaConfig, tok).to_dict(),
        image_token_id=tok.convert_tokens_to_ids("<image>"), scale_factor=2)
    _save(SmolVLMForConditionalGeneration(config), processor, path)


# -- PaliGemma: no chat template, the processor writes <image>*n + BOS + prompt + "\n" -------
# Recent PaliGemma checkpoints carry a chat template that writes the image placeholder and the
# text, nothing else (the processor adds BOS and "\n").
PALIGEMMA_TEMPLATE = (
    "{% for message in messages %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<image>{% elif content['type'] == 'text' %}"
    "{{ content['text'] }}{% endif %}{% endfor %}{% endfor %}")


def build_paligemma(path: Path, chat_template: str | None = None) -> None:
    from transformers import (
        GemmaConfig,
        PaliGemmaConfig,
        PaliGemmaForConditionalGeneration,
        PaliGemmaProcessor,
        SiglipImageProcessorPil,
    )

    tok = train_tokenizer("sp", ["<image>"], bos="<bos>", eos="<eos>", pad="<pad>", unk="<unk>",
                          add_bos=True, extra_special_tokens={"image_token": "<image>"})
    image_processor = SiglipImageProcessorPil(size={"height": 16, "width": 16})
    image_processor.image_seq_length = 16
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tok,
                                   chat_template=chat_template)
    tok = processor.tokenizer  # the processor added its <loc>/<seg> tokens
    config = PaliGemmaConfig(
        vision_config=_siglip(projection_dim=32), projection_dim=32,
        text_config=_text_config(GemmaConfig, tok, head_dim=8).to_dict(),
        image_token_index=tok.convert_tokens_to_ids("<image>"))
    _save(PaliGemmaForConditionalGeneration(config), processor, path)


# -- Gemma 3: template writes BOS and ends "model\n"; zero-initialised projector -------------
GEMMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<start_of_turn>"
    "{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<start_of_image>"
    "{% elif item['type'] == 'text' %}{{ item['text'] | trim }}{% endif %}{% endfor %}"
    "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")


def build_gemma3(path: Path) -> None:
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3ImageProcessorPil,
        Gemma3Processor,
        Gemma3TextConfig,
    )

    marks = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
             "image_token": "<image_soft_token>"}
    tok = train_tokenizer("sp", ["<start_of_turn>", "<end_of_turn>", *marks.values()],
                          bos="<bos>", eos="<eos>", pad="<pad>", unk="<unk>", add_bos=True,
                          extra_special_tokens=marks)
    processor = Gemma3Processor(
        image_processor=Gemma3ImageProcessorPil(size={"height": 16, "width": 16}),
        tokenizer=tok, image_seq_length=4, chat_template=GEMMA3_TEMPLATE)
    text = _text_config(Gemma3TextConfig, tok, head_dim=8, sliding_window=8,
                        layer_types=["sliding_attention", "full_attention"])
    config = Gemma3Config(
        text_config=text.to_dict(), vision_config=_siglip().to_dict(), mm_tokens_per_image=4,
        boi_token_index=tok.convert_tokens_to_ids("<start_of_image>"),
        eoi_token_index=tok.convert_tokens_to_ids("<end_of_image>"),
        image_token_index=tok.convert_tokens_to_ids("<image_soft_token>"))
    torch.manual_seed(0)
    model = Gemma3ForConditionalGeneration(config)
    # A fresh Gemma 3 projects every image to zeros (its projection starts at 0), so the
    # image would have no effect; give it random weights as a trained model has.
    torch.nn.init.normal_(model.model.multi_modal_projector.mm_input_projection_weight, std=0.5)
    _save(model, processor, path)


# -- Mllama (Llama 3.2 Vision): tiles, cross-attention layers, template ends "\n\n" ----------
MLLAMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}<|image|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] | trim }}{% endif %}{% endfor %}"
    "<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
MLLAMA_SPECIAL = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                  "<|end_header_id|>", "<|eot_id|>", "<|image|>", "<|finetune_right_pad_id|>",
                  "<|python_tag|>"]


def build_mllama(path: Path) -> None:
    from transformers import (
        MllamaConfig,
        MllamaForConditionalGeneration,
        MllamaImageProcessorPil,
        MllamaProcessor,
    )

    tok = train_tokenizer("byte", MLLAMA_SPECIAL, bos="<|begin_of_text|>", eos="<|eot_id|>",
                          pad="<|finetune_right_pad_id|>", add_bos=True,
                          extra_special_tokens={"image_token": "<|image|>"})
    processor = MllamaProcessor(
        image_processor=MllamaImageProcessorPil(size={"height": 16, "width": 16},
                                                max_image_tiles=2),
        tokenizer=tok, chat_template=MLLAMA_TEMPLATE)
    text = _text_config(dict, tok, num_hidden_layers=3, cross_attention_layers=[1])
    config = MllamaConfig(
        vision_config=dict(hidden_size=32, num_hidden_layers=2, num_global_layers=1,
                           attention_heads=4, intermediate_size=48, image_size=16, patch_size=4,
                           max_num_tiles=2, intermediate_layers_indices=[0],
                           vision_output_dim=64, supported_aspect_ratios=[[1, 1], [1, 2], [2, 1]]),
        text_config=text, image_token_index=tok.convert_tokens_to_ids("<|image|>"))
    torch.manual_seed(0)
    model = MllamaForConditionalGeneration(config)
    # Fresh Mllama gates its cross-attention (and the vision tiles' position embeddings) at
    # 0, so the image would have no effect; open them as a trained model has them.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("cross_attn_attn_gate", "cross_attn_mlp_gate", ".gate")):
                param.fill_(1.0)
    _save(model, processor, path)


# -- Aya Vision: SigLIP tiles + pixel shuffle, Cohere 2 text, template writes BOS ------------
AYA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|START_OF_TURN_TOKEN|>"
    "{% if message['role'] == 'user' %}<|USER_TOKEN|>{% elif message['role'] == 'assistant' %}"
    "<|CHATBOT_TOKEN|>{% else %}<|SYSTEM_TOKEN|>{% endif %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}<image>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}"
    "<|END_OF_TURN_TOKEN|>{% endfor %}"
    "{% if add_generation_prompt %}<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>{% endif %}")
AYA_SPECIAL = ["<BOS_TOKEN>", "<EOS_TOKEN>", "<PAD>", "<|START_OF_TURN_TOKEN|>",
               "<|END_OF_TURN_TOKEN|>", "<|USER_TOKEN|>", "<|CHATBOT_TOKEN|>", "<|SYSTEM_TOKEN|>",
               "<image>", "<|START_OF_IMG|>", "<|END_OF_IMG|>", "<|IMG_PATCH|>",
               "<|IMG_LINE_BREAK|>", "TILE_GLOBAL", *[f"TILE_{i}" for i in range(1, 7)]]


def build_aya_vision(path: Path) -> None:
    from transformers import (
        AyaVisionConfig,
        AyaVisionForConditionalGeneration,
        AyaVisionProcessor,
        Cohere2Config,
        GotOcr2ImageProcessorPil,
    )

    tok = train_tokenizer("byte", AYA_SPECIAL, bos="<BOS_TOKEN>", eos="<|END_OF_TURN_TOKEN|>",
                          pad="<PAD>", add_bos=True)
    processor = AyaVisionProcessor(
        image_processor=GotOcr2ImageProcessorPil(size={"height": 16, "width": 16},
                                                 crop_to_patches=True, min_patches=1,
                                                 max_patches=4),
        tokenizer=tok, patch_size=4, img_size=16, downsample_factor=2,
        chat_template=AYA_TEMPLATE)
    text = _text_config(Cohere2Config, tok, head_dim=8, sliding_window=8,
                        layer_types=["sliding_attention", "full_attention"])
    config = AyaVisionConfig(
        vision_config=_siglip().to_dict(), text_config=text.to_dict(), downsample_factor=2,
        image_token_index=tok.convert_tokens_to_ids("<|IMG_PATCH|>"))
    _save(AyaVisionForConditionalGeneration(config), processor, path)


HF = "mibench.models.hf:HFModelAdapter"
FAMILIES: dict[str, tuple[Callable[[Path], None], Family]] = {
    "llava": (build_llava, Family("llava", HF, " A")),
    "llava_next": (build_llava_next, Family("llava_next", HF, " A",
                                            sizes=((16, 16), (32, 16), (16, 32)))),
    "instructblip": (build_instructblip,
                     Family("instructblip", "mibench.models.instructblip:InstructBlipAdapter",
                            " A")),
    "qwen2_vl": (build_qwen2_vl, Family("qwen2_vl", HF, "A",
                                        sizes=((16, 16), (24, 16), (16, 32)))),
    "qwen2_5_vl": (build_qwen2_5_vl, Family("qwen2_5_vl", HF, "A",
                                            sizes=((16, 16), (32, 16), (16, 24)))),
    "internvl": (build_internvl, Family("internvl", HF, "A")),
    "idefics3": (build_idefics3, Family("idefics3", HF, " A",
                                        sizes=((16, 16), (32, 16), (32, 32)))),
    "smolvlm": (build_smolvlm, Family("smolvlm", "mibench.models.smolvlm:SmolVLMAdapter", " A",
                                      sizes=((16, 16), (32, 16), (32, 32)))),
    "paligemma": (build_paligemma,
                  Family("paligemma", "mibench.models.paligemma:PaliGemmaAdapter", "A")),
    # the same weights as "paligemma", with a chat template, loaded as `model=hf` loads it
    "paligemma_chat": (lambda path: build_paligemma(path, PALIGEMMA_TEMPLATE),
                       Family("paligemma_chat", HF, "A")),
    "gemma3": (build_gemma3, Family("gemma3", HF, "A")),
    # its language model embeds the tokens itself (no embeddings for EmbeddingPGD to perturb)
    # and its pixels come per image and tile (a layout PixelPGD does not know yet)
    "mllama": (build_mllama, Family("mllama", "mibench.models.mllama:MllamaAdapter", "A",
                                    refused_attacks=frozenset({"EmbeddingPGD", "PixelPGD"}))),
    # tiles of one image come as separate images: PixelPGD's layout does not know them yet
    "aya_vision": (build_aya_vision, Family("aya_vision", HF, "A",
                                            sizes=((16, 16), (32, 16), (16, 32)),
                                            refused_attacks=frozenset({"PixelPGD"}))),
}


def missing_requirement(name: str) -> str | None:
    """Why a family cannot be built here, or None."""
    if name == "smolvlm" and importlib.util.find_spec("num2words") is None:
        return "SmolVLM's processor needs the num2words package"
    return None


def build(name: str, root: Path) -> Family:
    builder, family = FAMILIES[name]
    path = root / name
    torch.manual_seed(0)
    builder(path)
    family.path = str(path)
    return family


def load(name: str, root: Path):
    """Build the family's tiny checkpoint and load it through its adapter, by local path."""
    family = build(name, root)
    module, cls = family.adapter.split(":")
    adapter = getattr(importlib.import_module(module), cls).from_pretrained(
        family.path, name=family.name, device="cpu", **family.load_kwargs)
    return family, adapter
