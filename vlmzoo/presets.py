"""Named configurations: ``tiny`` ones for tests and demos (built offline), and the papers' sizes (config only).

``get_config(family, preset)`` returns a config; ``get_processor(family, preset)`` a processor whose tokenizer
is a small byte-level BPE trained here, in memory, on a fixed corpus, with ``<image>`` as a special token and
a chat template that wraps assistant replies in ``{% generation %}`` (so training masks come from
``return_assistant_tokens_mask``). Nothing is downloaded.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from .auto import get_family
from .processing.chat_templates import vicuna_chat_template
from .registry import Registry

IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", IMAGE_TOKEN]

# LLaVA's vicuna_v1 style with newline-separated turns and no default system prompt; {% generation %}
# marks what the model learns to write
CHAT_TEMPLATE = vicuna_chat_template(system_prompt=None, user_end="\n", assistant_end="\n")

_CORPUS = [
    "USER: ASSISTANT: SYSTEM: A chat between a curious user and an artificial intelligence assistant.",
    "What color is the shape? What shape is in the image? Where is the shape? Is it on the left or the right?",
    "What is the color of the object? Which shape do you see? Describe the image. How many objects are there?",
    "red green blue yellow white black purple orange cyan magenta gray pink brown",
    "circle square triangle cross ring star rectangle diamond",
    "left right top bottom center middle upper lower corner",
    "The image shows a small red circle on the left. There is a blue square at the top.",
    "yes no one two three four five six seven eight nine ten zero",
    "a an the is are was were in on at of to and or with for this that it there here image picture photo",
    "Hello world! The quick brown fox jumps over the lazy dog. 0123456789 .,;:!?'\"()[]{}-_/",
]


@functools.lru_cache(maxsize=None)
def _tiny_tokenizer_json(vocab_size: int) -> str:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS * 4, trainer=trainer)
    return tokenizer.to_str()


def build_tiny_tokenizer(vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A small byte-level BPE tokenizer (every string encodes) with ``<image>`` and the chat template."""
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tiny_tokenizer_json(vocab_size)),
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": IMAGE_TOKEN},
        padding_side="left",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


# ----- presets ------------------------------------------------------------------------------------------
PRESETS: Registry = Registry("preset")


def _preset(family: str, name: str) -> Callable:
    return PRESETS.register(f"{family}/{name}")


def _tiny_text_config(tokenizer: PreTrainedTokenizerFast) -> dict:
    return {
        "model_type": "llama",
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 1024,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


_TINY_CLIP = {
    "model_type": "clip_vision_model",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "image_size": 64,
    "patch_size": 16,
    "projection_dim": 64,
}


@_preset("llava", "tiny")
def _llava_tiny(**overrides) -> dict:
    """LLaVA 1.5 in miniature: CLIP 64 px / patch 16 (16 tokens), mlp2x_gelu, a 2-layer Llama."""
    tokenizer = build_tiny_tokenizer()
    return {
        "vision_config": dict(_TINY_CLIP),
        "text_config": _tiny_text_config(tokenizer),
        "image_token_id": tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        "projector_type": "mlp2x_gelu",
        **overrides,
    }


@_preset("llava", "tiny-linear")
def _llava_tiny_linear() -> dict:
    """LLaVA 1.0 in miniature: linear projector."""
    return _llava_tiny(projector_type="linear")


@_preset("llava", "tiny-anyres")
def _llava_tiny_anyres() -> dict:
    """LLaVA-NeXT in miniature: AnyRes over 64 px tiles."""
    return _llava_tiny(image_grid_pinpoints=[[64, 128], [128, 64], [128, 128], [192, 64], [64, 192]])


def _clip_large_336() -> dict:
    from .configuration.configuration_llava import CLIP_VIT_L_336

    return {"model_type": "clip_vision_model", **CLIP_VIT_L_336}


def _vicuna(hidden: int, layers: int, heads: int, intermediate: int) -> dict:
    return {
        "model_type": "llama",
        "vocab_size": 32064,
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "pad_token_id": 0,
    }


@_preset("llava", "llava-1.5-7b")
def _llava_15_7b() -> dict:
    """LLaVA-1.5-7B: CLIP ViT-L/14-336 + mlp2x_gelu + Vicuna-7B (576 image tokens)."""
    return {"vision_config": _clip_large_336(), "text_config": _vicuna(4096, 32, 32, 11008), "image_token_id": 32000}


@_preset("llava", "llava-1.5-13b")
def _llava_15_13b() -> dict:
    """LLaVA-1.5-13B: CLIP ViT-L/14-336 + mlp2x_gelu + Vicuna-13B."""
    return {"vision_config": _clip_large_336(), "text_config": _vicuna(5120, 40, 40, 13824), "image_token_id": 32000}


@_preset("llava", "llava-next-7b")
def _llava_next_7b() -> dict:
    """LLaVA-NeXT (1.6) Vicuna-7B: AnyRes up to 672x672 / 1008x336, spatial unpad, image newline."""
    return {
        "vision_config": _clip_large_336(),
        "text_config": _vicuna(4096, 32, 32, 11008),
        "image_token_id": 32000,
        "image_grid_pinpoints": [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
    }


def preset_names(family: str) -> list[str]:
    """The presets a family has."""
    return [key.split("/", 1)[1] for key in PRESETS.keys() if key.startswith(f"{family}/")]


def get_config(family: str, preset: str = "tiny", **overrides):
    """Config of ``family`` (e.g. ``"llava"``) at ``preset`` (e.g. ``"tiny"``, ``"llava-1.5-7b"``)."""
    config_class = get_family(family).config_class
    if f"{family}/{preset}" not in PRESETS:
        raise ValueError(f"unknown preset '{preset}' for family '{family}'; valid presets: {preset_names(family)}")
    return config_class(**{**PRESETS.get(f"{family}/{preset}")(), **overrides})


def get_processor(family: str, preset: str = "tiny", config=None):
    """Processor matching ``get_config(family, preset)``: the tiny tokenizer and the right image processor."""
    config = config if config is not None else get_config(family, preset)
    # every family's processor class builds itself from a model config (one place: presets, converters, docs)
    return get_family(family).processor_class.from_model_config(config, build_tiny_tokenizer())
