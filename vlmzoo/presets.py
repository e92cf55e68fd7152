"""Named configurations: ``tiny`` ones for tests and demos (built offline), and the papers' sizes (config only).

``get_config(family, preset)`` returns a config; ``get_processor(family, preset)`` a processor whose tokenizer
is a small byte-level BPE trained here, in memory, on a fixed corpus, with ``<image>`` as a special token and
a chat template that wraps assistant replies in ``{% generation %}`` (so training masks come from
``return_assistant_tokens_mask``). Nothing is downloaded.
"""

from __future__ import annotations

import functools
import inspect
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


def build_tiny_tokenizer(vocab_size: int = 512, padding_side: str = "left") -> PreTrainedTokenizerFast:
    """A small byte-level BPE tokenizer (every string encodes) with ``<image>`` and the chat template.

    ``padding_side="right"`` for encoders with absolute positions (InstructBLIP's Q-Former tokenizer).
    """
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tiny_tokenizer_json(vocab_size)),
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": IMAGE_TOKEN},
        padding_side=padding_side,
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


# ----- Q-Former families: BLIP-2 (MiniGPT-4 as a preset) and InstructBLIP ---------------------------------
_TINY_BLIP_VISION = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "image_size": 32,
    "patch_size": 8,
    # transformers' default (1e-10) assumes pretrained EVA weights; a random tiny tower would see every image alike
    "initializer_range": 0.02,
}
_TINY_QFORMER = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "cross_attention_frequency": 1,
}


def _tiny_opt_config(tokenizer: PreTrainedTokenizerFast) -> dict:
    return {
        "model_type": "opt",
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "word_embed_proj_dim": 64,
        "ffn_dim": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 512,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def _tiny_t5_config(tokenizer: PreTrainedTokenizerFast) -> dict:
    """A 2+2-layer Flan-T5-style LM (gated GELU, untied head; the decoder starts from the pad token, as T5's)."""
    return {
        "model_type": "t5",
        "vocab_size": len(tokenizer),
        "d_model": 64,
        "d_kv": 16,
        "d_ff": 128,
        "num_layers": 2,
        "num_decoder_layers": 2,
        "num_heads": 4,
        "relative_attention_num_buckets": 8,
        "feed_forward_proj": "gated-gelu",
        "tie_word_embeddings": False,
        "decoder_start_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


@_preset("blip2", "tiny")
def _blip2_tiny(**overrides) -> dict:
    """BLIP-2 OPT in miniature: ViT 32 px / patch 8, a 2-layer Q-Former with 8 queries, a 2-layer OPT."""
    tokenizer = build_tiny_tokenizer()
    return {
        "vision_config": dict(_TINY_BLIP_VISION),
        "qformer_config": dict(_TINY_QFORMER),
        "text_config": _tiny_opt_config(tokenizer),
        "num_query_tokens": 8,
        "image_token_id": tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        **overrides,
    }


@_preset("blip2", "tiny-llama")
def _blip2_tiny_llama() -> dict:
    """BLIP-2 with a 2-layer Llama (the decoder family of BLIP-2 Vicuna / MiniGPT-4)."""
    return _blip2_tiny(text_config=_tiny_text_config(build_tiny_tokenizer()))


@_preset("blip2", "tiny-t5")
def _blip2_tiny_t5() -> dict:
    """BLIP-2 with a 2+2-layer Flan-T5-style encoder-decoder (the prompt is encoded, the answer decoded)."""
    return _blip2_tiny(text_config=_tiny_t5_config(build_tiny_tokenizer()))


# MiniGPT-4: frozen ViT and Q-Former; one linear projection into a LLaMA-family LM trains in both stages
# (stage 1 lr 1e-4 on image-text pairs, stage 2 lr 3e-5 on the curated conversations)
MINIGPT4_STAGES = {
    "qformer_pretrain": ["qformer"],
    "align": ["multi_modal_projector"],
    "instruct": ["multi_modal_projector"],
    "full": ["vision_tower", "qformer", "multi_modal_projector", "language_model"],
}


MINIGPT4_LEARNING_RATES = {"align": 1e-4, "instruct": 3e-5, "full": 3e-5}


def _minigpt4_recipe() -> dict:
    return {
        "training_stages": {k: list(v) for k, v in MINIGPT4_STAGES.items()},
        "recipe_learning_rates": dict(MINIGPT4_LEARNING_RATES),
    }


@_preset("blip2", "tiny-minigpt4")
def _blip2_tiny_minigpt4() -> dict:
    """MiniGPT-4 in miniature: BLIP-2's layout, a Llama LM, only the projection trains."""
    return {**_blip2_tiny_llama(), **_minigpt4_recipe()}


def _opt(hidden: int, layers: int, heads: int) -> dict:
    return {
        "model_type": "opt",
        "vocab_size": 50272,
        "hidden_size": hidden,
        "word_embed_proj_dim": hidden,
        "ffn_dim": 4 * hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "max_position_embeddings": 2048,
        "bos_token_id": 2,
        "eos_token_id": 50118,
        "pad_token_id": 1,
    }


@_preset("blip2", "blip2-opt-2.7b")
def _blip2_opt_27b() -> dict:
    """BLIP-2 OPT-2.7b: EVA ViT-g/14 at 224 px, 32 queries, OPT-2.7b (``<image>`` added as id 50265)."""
    return {"text_config": _opt(2560, 32, 32), "num_query_tokens": 32, "image_token_id": 50265}


def _flan_t5(d_model: int, d_ff: int, layers: int, heads: int) -> dict:
    return {
        "model_type": "t5",
        "vocab_size": 32128,
        "d_model": d_model,
        "d_kv": 64,
        "d_ff": d_ff,
        "num_layers": layers,
        "num_heads": heads,
        "feed_forward_proj": "gated-gelu",
        "tie_word_embeddings": False,
        "decoder_start_token_id": 0,
        "pad_token_id": 0,
        "eos_token_id": 1,
    }


@_preset("blip2", "blip2-flan-t5-xl")
def _blip2_flan_t5_xl() -> dict:
    """BLIP-2 Flan-T5-XL: EVA ViT-g/14, 32 queries, Flan-T5-XL (24+24 layers, d_model 2048; ``<image>`` is 32100)."""
    return {"text_config": _flan_t5(2048, 5120, 24, 32), "num_query_tokens": 32, "image_token_id": 32100}


@_preset("blip2", "minigpt4-vicuna-13b")
def _minigpt4_13b() -> dict:
    """MiniGPT-4 (Vicuna-13B): BLIP-2's frozen ViT-g + Q-Former (32 queries), one trainable Linear(768 -> 5120)."""
    return {
        "text_config": _vicuna(5120, 40, 40, 13824),
        "num_query_tokens": 32,
        "image_token_id": 32000,
        **_minigpt4_recipe(),
    }


@_preset("blip2", "minigpt4-vicuna-7b")
def _minigpt4_7b() -> dict:
    """MiniGPT-4 (Vicuna-7B): as the 13B preset with Vicuna-7B."""
    return {**_minigpt4_13b(), "text_config": _vicuna(4096, 32, 32, 11008)}


@_preset("instructblip", "tiny")
def _instructblip_tiny(**overrides) -> dict:
    """InstructBLIP in miniature: the tiny BLIP-2 layout with an instruction-aware Q-Former and a 2-layer Llama."""
    tokenizer = build_tiny_tokenizer()
    qformer = {**_TINY_QFORMER, "vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id,
               "max_position_embeddings": 512}
    return {
        "vision_config": dict(_TINY_BLIP_VISION),
        "qformer_config": qformer,
        "text_config": _tiny_text_config(tokenizer),
        "num_query_tokens": 8,
        "image_token_id": tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        **overrides,
    }


@_preset("instructblip", "tiny-t5")
def _instructblip_tiny_t5() -> dict:
    """InstructBLIP with a 2+2-layer Flan-T5-style encoder-decoder."""
    return _instructblip_tiny(text_config=_tiny_t5_config(build_tiny_tokenizer()))


@_preset("instructblip", "instructblip-flan-t5-xl")
def _instructblip_flan_t5_xl() -> dict:
    """InstructBLIP Flan-T5-XL: EVA ViT-g/14, instruction-aware Q-Former, Flan-T5-XL."""
    return {
        "qformer_config": {"vocab_size": 30523},
        "text_config": _flan_t5(2048, 5120, 24, 32),
        "num_query_tokens": 32,
        "image_token_id": 32100,
    }


@_preset("instructblip", "instructblip-vicuna-7b")
def _instructblip_vicuna_7b() -> dict:
    """InstructBLIP Vicuna-7B: EVA ViT-g/14, instruction-aware Q-Former (BERT vocabulary + [DEC]), Vicuna-7B."""
    return {
        "qformer_config": {"vocab_size": 30523},
        "text_config": {**_vicuna(4096, 32, 32, 11008), "vocab_size": 32001},
        "num_query_tokens": 32,
        "image_token_id": 32000,
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
    processor_class = get_family(family).processor_class
    extras = {}
    if "qformer_tokenizer" in inspect.signature(processor_class.from_model_config).parameters:
        extras["qformer_tokenizer"] = build_tiny_tokenizer(padding_side="right")  # InstructBLIP's second tokenizer
    return processor_class.from_model_config(config, build_tiny_tokenizer(), **extras)
