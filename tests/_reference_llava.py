"""Helpers of the LLaVA conversion and processor-parity tests: tiny transformers references, built offline.

The references are transformers' own ``LlavaForConditionalGeneration`` / ``LlavaNextForConditionalGeneration``
with tiny CLIP / SigLIP towers and Llama / Qwen2 LMs, and transformers' ``LlavaProcessor`` /
``LlavaNextProcessor`` over ``LlavaImageProcessorPil`` / ``LlavaNextImageProcessorPil``. The original
LLaVA repository's layout (haotian-liu/LLaVA) is written from a reference's weights by
:func:`write_original_checkpoint`, so a conversion can be compared with the reference it came from.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaImageProcessorPil,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessorPil,
    LlavaNextProcessor,
    LlavaProcessor,
    PreTrainedTokenizerFast,
    Qwen2Config,
    SiglipVisionConfig,
)


TILE = 32  # tower image size
PATCH = 8  # 4x4 patches per view
PINPOINTS = [[32, 64], [64, 32], [64, 64], [96, 32], [32, 96]]  # [height, width], multiples of TILE
SIGLIP_MEAN = [0.5, 0.5, 0.5]
PROMPTS = [
    "USER: <image>\nWhat color is the shape? ASSISTANT:",
    "USER: <image>\nDescribe the image. How many objects are there, and where is the red circle? ASSISTANT:",
]


# ----- configs ----------------------------------------------------------------------------------------------
def tiny_clip_config() -> CLIPVisionConfig:
    return CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
        image_size=TILE, patch_size=PATCH, projection_dim=32,
    )  # fmt: skip


def tiny_siglip_config() -> SiglipVisionConfig:
    return SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
        image_size=TILE, patch_size=PATCH,
    )  # fmt: skip


def tiny_text_config(tokenizer, model_type: str = "llama", vocab_size: int | None = None):
    config_class = {"llama": LlamaConfig, "qwen2": Qwen2Config}[model_type]
    return config_class(
        vocab_size=vocab_size or len(tokenizer), hidden_size=48, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip


# ----- tokenizers -------------------------------------------------------------------------------------------
def tokenizer_without_image_token() -> PreTrainedTokenizerFast:
    """A byte-level BPE like LLaVA's base LLM tokenizers: knows no <image> token (the original uses index -200)."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )  # fmt: skip
    backend.train_from_iterator([" ".join(PROMPTS) + " red green blue circle square left right"] * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>", padding_side="left"
    )


# ----- reference models -------------------------------------------------------------------------------------
def randomize_(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Overwrite every parameter with N(0, 0.2^2) noise (LayerNorm weights around 1) so no layer is near-trivial."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator) * 0.2
            is_norm_weight = name.endswith("weight") and parameter.dim() == 1
            parameter.copy_(noise + 1.0 if is_norm_weight else noise)
    return model


def build_reference(
    kind: str,
    vision_config,
    text_config,
    image_token_id: int,
    strategy: str = "default",
    pinpoints: list | None = None,
    tie_word_embeddings: bool = False,
    seed: int = 0,
):
    """A transformers LLaVA ('llava') or LLaVA-NeXT ('llava_next') reference with random weights, in eval mode."""
    common = dict(
        vision_config=vision_config, text_config=text_config, image_token_index=image_token_id,
        vision_feature_layer=-2, vision_feature_select_strategy=strategy, tie_word_embeddings=tie_word_embeddings,
    )  # fmt: skip
    if kind == "llava":
        model = LlavaForConditionalGeneration(LlavaConfig(**common))
    else:
        model = LlavaNextForConditionalGeneration(LlavaNextConfig(image_grid_pinpoints=pinpoints or PINPOINTS, **common))
    randomize_(model, seed)
    if tie_word_embeddings:
        model.tie_weights()
    return model.eval()


def image_kwargs(tower: str = "clip", do_pad: bool | None = None) -> dict:
    """transformers image-processor settings for the tiny tower (CLIP: shortest edge + crop; SigLIP: squash)."""
    if tower == "siglip":
        # crop_size is still the AnyRes tile size when centre-cropping is off (transformers reads it first)
        settings = dict(size={"height": TILE, "width": TILE}, crop_size={"height": TILE, "width": TILE},
                        do_center_crop=False, resample=2, image_mean=SIGLIP_MEAN, image_std=SIGLIP_MEAN)  # fmt: skip
    else:
        settings = dict(size={"shortest_edge": TILE}, crop_size={"height": TILE, "width": TILE})
    if do_pad is not None:
        settings["do_pad"] = do_pad
    return settings


def reference_processor(
    kind: str, tokenizer, strategy: str = "default", extra_tokens: int = 1, pinpoints=None, tower: str = "clip",
    do_pad: bool | None = None, chat_template: str | None = None,
):  # fmt: skip
    """transformers' LlavaProcessor / LlavaNextProcessor over the PIL image processors."""
    if kind == "llava":
        image_processor = LlavaImageProcessorPil(**image_kwargs(tower, do_pad))
        processor_class = LlavaProcessor
    else:
        image_processor = LlavaNextImageProcessorPil(
            image_grid_pinpoints=pinpoints or PINPOINTS, **image_kwargs(tower, do_pad)
        )
        processor_class = LlavaNextProcessor
    return processor_class(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=PATCH,
        vision_feature_select_strategy=strategy, num_additional_image_tokens=extra_tokens,
        chat_template=chat_template if chat_template is not None else tokenizer.chat_template,
    )  # fmt: skip


def random_image(height: int, width: int, seed: int, mode: str = "RGB") -> PIL.Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    pixels = rng.integers(0, 256, size=(height, width, channels), dtype=np.uint8)
    return PIL.Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode=mode)


def save_hf_input(reference, processor, directory: Path, legacy_layout: bool = True, max_shard_size="50GB") -> Path:
    """``save_pretrained`` of the reference model and processor (transformers 5 writes the legacy layout)."""
    reference.save_pretrained(directory, save_original_format=legacy_layout, max_shard_size=max_shard_size)
    if processor is not None:
        processor.save_pretrained(directory)
    return directory


def resave_as_bin_shards(source: Path, target: Path, num_shards: int = 3, fmt: str = "bin") -> Path:
    """Copy a save_pretrained directory, with its weights rewritten as ``pytorch_model-*.bin`` shards + index
    (``fmt="safetensors"``: ``model-*.safetensors`` shards + ``model.safetensors.index.json``)."""
    from safetensors.torch import load_file

    target.mkdir(parents=True)
    state = {}
    for path in sorted(source.iterdir()):
        if path.suffix == ".safetensors":
            state.update(load_file(path))
        elif not path.name.endswith(".index.json"):
            (target / path.name).write_bytes(path.read_bytes())
    names = sorted(state)
    weight_map = {}
    for number in range(num_shards):
        shard_names = names[number::num_shards]
        shard = {name: state[name] for name in shard_names}
        if fmt == "bin":
            file_name = f"pytorch_model-{number + 1:05d}-of-{num_shards:05d}.bin"
            torch.save(shard, target / file_name)
        else:
            file_name = f"model-{number + 1:05d}-of-{num_shards:05d}.safetensors"
            save_file(shard, target / file_name, metadata={"format": "pt"})
        weight_map.update({name: file_name for name in shard_names})
    index_name = "pytorch_model.bin.index.json" if fmt == "bin" else "model.safetensors.index.json"
    (target / index_name).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return target


def snapshot(directory: Path, directory_mtimes: bool = True) -> dict[str, tuple]:
    """Every entry under ``directory``: files by (size, mtime, sha256 of the content), directories by mtime.

    Equal snapshots before and after a failed conversion show it changed nothing (no file replaced, touched,
    added or removed, no staging directory or temporary file left behind)."""
    entries = {}
    for path in sorted(directory.rglob("*")):
        stat = path.stat()
        name = str(path.relative_to(directory))
        if path.is_dir():
            entries[name + "/"] = (stat.st_mtime_ns,) if directory_mtimes else ()
        else:
            entries[name] = (stat.st_size, stat.st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
    return entries


def add_tensors_to_checkpoint(
    directory: Path, extra: dict[str, torch.Tensor] | None = None, drop: tuple[str, ...] = ()
) -> None:
    """Rewrite a single-file ``model.safetensors`` with tensors added and/or removed."""
    from safetensors.torch import load_file

    path = directory / "model.safetensors"
    state = {k: v for k, v in load_file(path).items() if k not in drop}
    state.update(extra or {})
    save_file(state, path, metadata={"format": "pt"})


# ----- the original LLaVA repository's layout ---------------------------------------------------------------
# in-memory transformers reference key -> original LLaVA key (facts from haotian-liu/LLaVA's LlavaLlamaForCausalLM)
_TO_ORIGINAL = [
    (r"model\.language_model\.(.+)", r"model.\1"),
    (r"lm_head\.weight", r"lm_head.weight"),
    (r"model\.multi_modal_projector\.linear_1\.(.+)", r"model.mm_projector.0.\1"),
    (r"model\.multi_modal_projector\.linear_2\.(.+)", r"model.mm_projector.2.\1"),
    (r"model\.image_newline", r"model.image_newline"),  # the reference's bare parameter
    (r"model\.vision_tower\.(.+)", r"model.vision_tower.vision_tower.vision_model.\1"),
]


def original_state_dict(reference, include_tower: bool, vocab_rows: int | None = None) -> dict[str, torch.Tensor]:
    """The reference's weights under the original LLaVA names (tower optional; vocabulary cut to ``vocab_rows``)."""
    state = {}
    for name, tensor in reference.state_dict().items():
        for pattern, replacement in _TO_ORIGINAL:
            if re.fullmatch(pattern, name):
                new_name = re.sub(pattern, replacement, name)
                break
        else:
            raise AssertionError(f"no original name for {name}")
        if new_name.startswith("model.vision_tower.") and not include_tower:
            continue
        if vocab_rows is not None and new_name in ("model.embed_tokens.weight", "lm_head.weight"):
            tensor = tensor[:vocab_rows]
        state[new_name] = tensor.detach().clone().contiguous()
    return state


def original_config(reference, mm_overrides: dict, vocab_size: int) -> dict:
    """An original LLaVA config.json: the LLM's fields at the top level plus the mm_* fields."""
    text = reference.config.text_config.to_dict()
    text.pop("model_type", None)
    text.update(vocab_size=vocab_size, rope_theta=text.get("rope_parameters", {}).get("rope_theta", 10000.0))
    text.pop("rope_parameters", None)
    config = {
        **text,
        "architectures": ["LlavaLlamaForCausalLM"],
        "model_type": "llava",
        "mm_vision_tower": "openai/clip-vit-large-patch14-336",
        "mm_hidden_size": reference.config.vision_config.hidden_size,
        "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "patch",
        "mm_projector_type": "mlp2x_gelu",
        "mm_use_im_start_end": False,
        "mm_use_im_patch_token": False,
        "use_mm_proj": True,
        "tune_mm_mlp_adapter": False,
        "image_aspect_ratio": "pad",
        "tokenizer_model_max_length": 2048,
        "tokenizer_padding_side": "right",
        "torch_dtype": "float32",
        "transformers_version": "4.31.0",
        **mm_overrides,
    }
    return config


def write_original_checkpoint(directory: Path, state: dict, config: dict, tokenizer=None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    save_file(state, directory / "model.safetensors", metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    return directory


def write_encoder(directory: Path, reference, with_weights: bool) -> Path:
    """A saved transformers CLIPVisionModel holding the reference's tower (or only its config)."""
    vision_config = reference.config.vision_config
    if not with_weights:
        vision_config.save_pretrained(directory)
        return directory
    encoder = CLIPVisionModel(vision_config)
    encoder.load_state_dict(reference.model.vision_tower.state_dict())
    encoder.save_pretrained(directory)
    return directory

