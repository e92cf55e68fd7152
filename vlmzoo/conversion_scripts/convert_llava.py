"""Convert LLaVA 1.0 / 1.5 / NeXT checkpoints into vlmzoo's ``ZooLlavaForConditionalGeneration`` (DESIGN.md §6).

Follows the LLaVA papers (Liu et al. 2023, 2024) and their two public checkpoint layouts:

- ``--source hf``: a directory written by transformers' ``LlavaForConditionalGeneration`` or
  ``LlavaNextForConditionalGeneration.save_pretrained``. transformers 5 writes the legacy layout
  (``language_model.model.*``, ``language_model.lm_head.weight``, ``vision_tower.*``,
  ``multi_modal_projector.linear_{1,2}.*``, ``image_newline``); its in-memory layout (``model.*``,
  ``lm_head.weight``) and transformers 4's ``vision_tower.vision_model.*`` are accepted too.
- ``--source original``: the haotian-liu/LLaVA layout: Llama/Mistral fields and ``mm_*`` fields at the top of
  ``config.json``; ``model.embed_tokens``, ``model.layers.*``, ``model.norm``, ``lm_head.weight``,
  ``model.mm_projector.{0,2}.*`` (``model.mm_projector.*`` for the linear projector) -> ``linear_{1,2}``, ``model.image_newline``
  (AnyRes) and, when the tower was trained, ``model.vision_tower.vision_tower.vision_model.*``. The tower's
  config (and its weights when the checkpoint has none) come from ``--encoder DIR``, a saved transformers
  CLIP vision model, because ``mm_vision_tower`` names a Hub repository. The original code marks images
  with ``IMAGE_TOKEN_INDEX = -200``, not a vocabulary entry: ``<image>`` is added to the tokenizer when it is
  missing, and ``embed_tokens`` / ``lm_head`` grow by rows set to the mean of the existing ones.

Usage: ``python -m vlmzoo.conversion_scripts.convert_llava --source {hf,original} --input DIR --output DIR
[--encoder DIR] [--allow-unused KEY_REGEX ...]`` or ``vlmzoo convert llava ...``.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from transformers import AutoConfig, GenerationConfig, PreTrainedConfig
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PILImageResampling

from ..configuration.configuration_llava import ZooLlavaConfig
from ..modeling.modeling_llava import ZooLlavaForConditionalGeneration
from ..modeling.vision_towers import num_feature_layers, tokens_per_view, tower_extra_tokens
from ..processing import ZooAnyResImageProcessor, ZooFixedResImageProcessor, ZooLlavaProcessor
from ..registry import Registry
from .common import (
    CheckpointReader,
    ConversionArguments,
    ConversionJob,
    KeyTable,
    TensorSource,
    grow_rows_with_mean,
    load_tokenizer_if_present,
    parse_arguments,
    read_json,
    run_conversion,
)

IMAGE_TOKEN = "<image>"


@dataclass(kw_only=True)
class LlavaConversionArguments(ConversionArguments):
    source: Literal["hf", "original"] = field(
        metadata={"help": "hf: transformers Llava/LlavaNext save_pretrained; original: haotian-liu/LLaVA layout"}
    )
    encoder: str | None = field(
        default=None,
        metadata={"help": "original only: saved transformers CLIP vision model (config, and weights if the "
                  "checkpoint has no vision tower)"},
    )


# ----- key tables -----------------------------------------------------------------------------------------
# the tower: transformers 5 CLIP has no `vision_model.` level, transformers 4 checkpoints do
_TOWER_TARGETS = (r"model.vision_tower.\1", r"model.vision_tower.vision_model.\1")

HF_KEY_TABLE = KeyTable(
    [
        (r"language_model\.lm_head\.(.+)", r"lm_head.\1"),  # legacy layout (what save_pretrained writes)
        (r"language_model\.model\.(.+)", r"model.language_model.\1"),
        (r"model\.language_model\.(.+)", r"model.language_model.\1"),  # in-memory layout
        (r"lm_head\.(.+)", r"lm_head.\1"),
        (r"(?:model\.)?vision_tower\.(?:vision_model\.)?(.+)", _TOWER_TARGETS),
        (r"(?:model\.)?multi_modal_projector\.(linear_[12])\.(.+)", r"model.multi_modal_projector.\1.\2"),
        (r"(?:model\.)?image_newline", r"model.image_newline.weight"),
    ]
)

ORIGINAL_TOWER_PREFIX = "model.vision_tower.vision_tower."
ORIGINAL_KEY_TABLE = KeyTable(
    [
        (r"model\.mm_projector\.(weight|bias)", r"model.multi_modal_projector.linear_1.\1"),  # linear (LLaVA 1.0)
        (r"model\.mm_projector\.0\.(.+)", r"model.multi_modal_projector.linear_1.\1"),  # mlp2x_gelu: 0 and 2
        (r"model\.mm_projector\.2\.(.+)", r"model.multi_modal_projector.linear_2.\1"),
        (r"model\.vision_tower\.vision_tower\.(?:vision_model\.)?(.+)", _TOWER_TARGETS),
        (r"model\.image_newline", r"model.image_newline.weight"),
        (r"model\.(.+)", r"model.language_model.\1"),  # embed_tokens, layers.*, norm
        (r"lm_head\.(.+)", r"lm_head.\1"),
    ]
)

# a saved CLIPVisionModel (transformers 5: no prefix; 4: `vision_model.`); a full CLIPModel's text half,
# projections and logit scale map to nothing in the tower and are reported as unused
ENCODER_KEY_TABLE = KeyTable([(r"(?:vision_model\.)?(.+)", _TOWER_TARGETS)])


# ----- facts about the original repository's config -------------------------------------------------------
ORIGINAL_TEXT_MODEL_TYPES = {"llava": "llama", "llava_llama": "llama", "llava_mistral": "mistral"}
ORIGINAL_SELECT_FEATURE = {"patch": "default", "cls_patch": "full"}
ORIGINAL_PROJECTORS = ("linear", "mlp2x_gelu")


@dataclass(frozen=True)
class OriginalAspectRatio:
    """How one ``image_aspect_ratio`` value processes images, and the ``mm_patch_merge_type`` it needs."""

    anyres: bool
    pad_to_square: bool
    patch_merge_types: tuple[str, ...]


ORIGINAL_ASPECT_RATIOS = {
    None: OriginalAspectRatio(anyres=False, pad_to_square=False, patch_merge_types=("flat",)),
    "square": OriginalAspectRatio(anyres=False, pad_to_square=False, patch_merge_types=("flat",)),
    "pad": OriginalAspectRatio(anyres=False, pad_to_square=True, patch_merge_types=("flat",)),
    "anyres": OriginalAspectRatio(anyres=True, pad_to_square=False, patch_merge_types=("spatial_unpad",)),
}

# config.json keys of the original repository that describe the multimodal wrapper or training, not the LLM
_ORIGINAL_NON_TEXT_PREFIXES = ("mm_", "tune_mm_", "freeze_mm_", "unfreeze_mm_", "tokenizer_", "image_")
_ORIGINAL_NON_TEXT_KEYS = {"use_mm_proj", "architectures", "model_type", "_name_or_path", "transformers_version"}

# LLaVA 1.5's conversation format (conv_vicuna_v1): "<system> USER: <image>\n<q> ASSISTANT: <a></s>USER: ..."
VICUNA_V1_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
VICUNA_V1_CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- if messages[0]['content'] is string -%}{{- messages[0]['content'] -}}"
    "{%- else -%}{%- for part in messages[0]['content'] if part['type'] == 'text' -%}{{- part['text'] -}}{%- endfor -%}"
    "{%- endif -%}{%- set conversation = messages[1:] -%}"
    "{%- else -%}{{- '" + VICUNA_V1_SYSTEM.replace("'", "\\'") + "' -}}{%- set conversation = messages -%}{%- endif -%}"
    "{{- ' ' -}}"
    "{%- for message in conversation -%}"
    "{%- if message['content'] is string -%}{%- set parts = [{'type': 'text', 'text': message['content']}] -%}"
    "{%- else -%}{%- set parts = message['content'] -%}{%- endif -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{- 'ASSISTANT:' -}}{% generation %}"
    "{%- for part in parts if part['type'] == 'text' -%}{{- ' ' + part['text'] -}}{%- endfor -%}"
    "{{- eos_token -}}{% endgeneration %}"
    "{%- else -%}"
    "{{- 'USER: ' -}}"
    "{%- for part in parts -%}"
    "{%- if part['type'] == 'image' -%}{{- '<image>\\n' -}}"
    "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}{{- ' ' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}"
)

# image-processor settings carried over from a transformers (pre)processor config
_IMAGE_PROCESSOR_FIELDS = (
    "size", "crop_size", "image_mean", "image_std", "resample", "do_resize", "do_center_crop",
    "do_rescale", "rescale_factor", "do_normalize", "do_convert_rgb",
)  # fmt: skip


# ----- helpers shared by both sources ---------------------------------------------------------------------
def view_tokens(vision_config: PreTrainedConfig, extra_tokens: int, strategy: str) -> int:
    size = vision_config.image_size
    return tokens_per_view(size, size, vision_config.patch_size, extra_tokens, strategy)


def _saved_image_processor_settings(directory: Path) -> dict:
    """Image-processor fields saved in ``directory`` (5.x: inside processor_config.json; 4.x: preprocessor_config.json)."""
    settings = {}
    if (directory / "preprocessor_config.json").is_file():
        settings = read_json(directory / "preprocessor_config.json")
    if (directory / "processor_config.json").is_file():
        settings = read_json(directory / "processor_config.json").get("image_processor", settings)
    return settings


def _saved_chat_template(directory: Path, tokenizer) -> str | None:
    if (directory / "chat_template.jinja").is_file():
        return (directory / "chat_template.jinja").read_text()
    if (directory / "chat_template.json").is_file():
        return read_json(directory / "chat_template.json").get("chat_template")
    return getattr(tokenizer, "chat_template", None)


def build_image_processor(config: ZooLlavaConfig, saved: dict, pad_to_square: bool, anyres_pad: bool = True):
    """``ZooFixedResImageProcessor`` or ``ZooAnyResImageProcessor`` with the saved settings, else the tower's."""
    side = config.vision_config.image_size
    settings = {
        "size": {"shortest_edge": side},
        "crop_size": {"height": side, "width": side},
        "image_mean": list(OPENAI_CLIP_MEAN),
        "image_std": list(OPENAI_CLIP_STD),
        "resample": PILImageResampling.BICUBIC,
    }
    settings.update({key: saved[key] for key in _IMAGE_PROCESSOR_FIELDS if saved.get(key) is not None})
    if config.uses_anyres:
        return ZooAnyResImageProcessor(image_grid_pinpoints=config.image_grid_pinpoints, do_pad=anyres_pad, **settings)
    return ZooFixedResImageProcessor(pad_to_square=pad_to_square, **settings)


def _check_image_token(tokenizer, image_token: str, image_token_id: int) -> None:
    token_id = tokenizer.convert_tokens_to_ids(image_token)
    if token_id != image_token_id:
        raise ValueError(
            f"the tokenizer maps '{image_token}' to {token_id} but the config's image_token_id is {image_token_id}"
        )


def _extras_saver(processor: ZooLlavaProcessor | None, input_dir: Path):
    def save_extras(output: Path) -> None:
        if processor is not None:
            processor.save_pretrained(output)
        if (input_dir / "generation_config.json").is_file():
            GenerationConfig.from_pretrained(input_dir).save_pretrained(output)

    return save_extras


# ----- --source hf ----------------------------------------------------------------------------------------
HF_MODEL_TYPES = ("llava", "llava_next")


def convert_hf_config(source: PreTrainedConfig, extra_tokens: int) -> ZooLlavaConfig:
    """transformers ``LlavaConfig`` / ``LlavaNextConfig`` -> ``ZooLlavaConfig`` (mlp2x_gelu projector)."""
    if source.model_type not in HF_MODEL_TYPES:
        raise ValueError(f"--source hf converts model_type {list(HF_MODEL_TYPES)}, got '{source.model_type}'")
    if source.projector_hidden_act != "gelu":
        raise ValueError(
            f"projector_hidden_act '{source.projector_hidden_act}' is not supported: vlmzoo's mlp2x_gelu projector "
            f"uses exact GELU ('gelu')"
        )
    strategy = source.vision_feature_select_strategy
    return ZooLlavaConfig(
        vision_config=source.vision_config,
        text_config=source.text_config,
        image_token_id=source.image_token_id,
        projector_type="mlp2x_gelu",
        multimodal_projector_bias=source.multimodal_projector_bias,
        vision_feature_layer=source.vision_feature_layer,
        vision_feature_select_strategy=strategy,
        image_grid_pinpoints=source.image_grid_pinpoints if source.model_type == "llava_next" else None,
        image_seq_length=view_tokens(source.vision_config, extra_tokens, strategy),
        tie_word_embeddings=source.tie_word_embeddings,
        dtype=source.dtype,
    )


def _hf_processor(input_dir: Path, config: ZooLlavaConfig, extra_tokens: int, notes: list[str]):
    tokenizer = load_tokenizer_if_present(input_dir)
    if tokenizer is None:
        notes.append("the input has no tokenizer: no processor written")
        return None
    processor_file = input_dir / "processor_config.json"
    saved_processor = read_json(processor_file) if processor_file.is_file() else {}
    saved_image = _saved_image_processor_settings(input_dir)
    saved_extra = saved_processor.get("num_additional_image_tokens")
    if saved_extra is not None and saved_extra != extra_tokens:
        notes.append(
            f"the input processor said num_additional_image_tokens={saved_extra}; the tower adds {extra_tokens}, "
            f"which the converted processor uses"
        )
    if not saved_image:
        notes.append("the input has no image-processor settings: using the tower's size with CLIP mean/std, bicubic")
    image_token = saved_processor.get("image_token") or getattr(tokenizer, "image_token", None) or IMAGE_TOKEN
    _check_image_token(tokenizer, image_token, config.image_token_id)
    image_processor = build_image_processor(
        config, saved_image, pad_to_square=bool(saved_image.get("do_pad", False)), anyres_pad=saved_image.get("do_pad", True)
    )
    return ZooLlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=config.vision_config.patch_size,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        num_additional_image_tokens=extra_tokens,
        image_token=image_token,
        chat_template=_saved_chat_template(input_dir, tokenizer),
    )


SOURCES: Registry = Registry("llava checkpoint source")


@SOURCES.register("hf")
def prepare_hf(arguments: LlavaConversionArguments) -> ConversionJob:
    """A job converting a transformers Llava / LlavaNext directory."""
    if arguments.encoder is not None:
        raise ValueError("--encoder is only used with --source original (a transformers checkpoint holds its tower)")
    input_dir = Path(arguments.input)
    reader = CheckpointReader(input_dir)
    source_config = AutoConfig.from_pretrained(input_dir)
    extra_tokens = tower_extra_tokens(source_config.vision_config)
    config = convert_hf_config(source_config, extra_tokens)
    notes: list[str] = [f"source: transformers {source_config.model_type} checkpoint"]
    processor = _hf_processor(input_dir, config, extra_tokens, notes)
    return ConversionJob(
        sources=[TensorSource(reader, HF_KEY_TABLE)],
        model_class=ZooLlavaForConditionalGeneration,
        config=config,
        notes=notes,
        save_extras=_extras_saver(processor, input_dir),
    )


# ----- --source original ----------------------------------------------------------------------------------
def _original_choice(table, value, field_name: str):
    if value not in table:
        valid = [key for key in table if key is not None]
        raise ValueError(f"{field_name} '{value}' is not supported; supported values: {valid}")
    return table[value]


def original_text_config(source: dict) -> PreTrainedConfig:
    """The LLM's config: the top-level fields of the original config.json minus the multimodal ones."""
    model_type = _original_choice(ORIGINAL_TEXT_MODEL_TYPES, source.get("model_type"), "model_type")
    fields = {
        key: value
        for key, value in source.items()
        if key not in _ORIGINAL_NON_TEXT_KEYS and not key.startswith(_ORIGINAL_NON_TEXT_PREFIXES)
    }
    return AutoConfig.for_model(model_type, **fields)


def original_grid_pinpoints(source: dict) -> list[list[int]]:
    """AnyRes pinpoints as [height, width]; the original repository lists them as (width, height)."""
    pinpoints = source.get("image_grid_pinpoints")
    if isinstance(pinpoints, str):  # the original also accepts a Python literal, e.g. "[(336, 672), (672, 336)]"
        try:
            pinpoints = [list(pair) for pair in ast.literal_eval(pinpoints)]
        except (ValueError, SyntaxError, TypeError):
            raise ValueError(f"image_grid_pinpoints {pinpoints!r} is not a list of (width, height) pairs") from None
    if not isinstance(pinpoints, list) or not pinpoints or any(len(pair) != 2 for pair in pinpoints):
        raise ValueError(
            f"image_aspect_ratio 'anyres' needs image_grid_pinpoints as a list of [width, height] resolutions, got "
            f"{pinpoints!r}"
        )
    return [[int(height), int(width)] for width, height in pinpoints]


def _load_encoder_config(encoder: str | None) -> PreTrainedConfig:
    if encoder is None:
        raise ValueError(
            "--source original needs --encoder DIR: a saved transformers CLIP vision model whose config.json describes "
            "the vision tower (mm_vision_tower names a Hub repository, which is not read); its weights are used when "
            "the checkpoint has no model.vision_tower.* tensors"
        )
    config = AutoConfig.from_pretrained(encoder)
    return getattr(config, "vision_config", None) or config  # a full CLIPConfig holds the tower's as vision_config


def convert_original_config(
    source: dict, vision_config: PreTrainedConfig, image_token_id: int, vocab_size: int
) -> tuple[ZooLlavaConfig, OriginalAspectRatio]:
    """The original repository's config.json (+ the encoder's config) -> ``ZooLlavaConfig``."""
    if source.get("mm_use_im_start_end"):
        raise ValueError("mm_use_im_start_end=True (image start/end tokens, LLaVA 1.0 variants) is not supported")
    projector_type = source.get("mm_projector_type", "linear")
    if projector_type not in ORIGINAL_PROJECTORS:
        raise ValueError(f"mm_projector_type '{projector_type}' is not supported; supported: {list(ORIGINAL_PROJECTORS)}")
    if "mm_vision_select_layer" not in source:
        raise ValueError("the original config has no mm_vision_select_layer (is this a LLaVA checkpoint?)")
    select_feature = source.get("mm_vision_select_feature", "patch")
    strategy = _original_choice(ORIGINAL_SELECT_FEATURE, select_feature, "mm_vision_select_feature")
    aspect = _original_choice(ORIGINAL_ASPECT_RATIOS, source.get("image_aspect_ratio"), "image_aspect_ratio")
    merge_type = source.get("mm_patch_merge_type", "flat")
    if merge_type not in aspect.patch_merge_types:
        raise ValueError(
            f"mm_patch_merge_type '{merge_type}' with image_aspect_ratio '{source.get('image_aspect_ratio')}' is not "
            f"supported; supported: {list(aspect.patch_merge_types)}"
        )
    layer = source["mm_vision_select_layer"]
    mm_hidden_size = source.get("mm_hidden_size")
    if mm_hidden_size is not None and mm_hidden_size != vision_config.hidden_size * num_feature_layers(layer):
        raise ValueError(
            f"mm_hidden_size {mm_hidden_size} does not match the --encoder tower's hidden_size {vision_config.hidden_size}"
        )
    text_config = original_text_config(source)
    text_config.vocab_size = vocab_size
    extra_tokens = tower_extra_tokens(vision_config)
    config = ZooLlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_id=image_token_id,
        projector_type=projector_type,
        multimodal_projector_bias=True,
        vision_feature_layer=layer,
        vision_feature_select_strategy=strategy,
        image_grid_pinpoints=original_grid_pinpoints(source) if aspect.anyres else None,
        image_seq_length=view_tokens(vision_config, extra_tokens, strategy),
        tie_word_embeddings=bool(source.get("tie_word_embeddings", False)),
        dtype=source.get("dtype") or source.get("torch_dtype"),
    )
    return config, aspect


def _original_image_token(tokenizer, vocab_size: int, notes: list[str]) -> int:
    """Id of ``<image>``: the tokenizer's, else added to it; with no tokenizer, a new row after the vocabulary."""
    if tokenizer is None:
        notes.append(f"no tokenizer in the input: <image> gets the new id {vocab_size}")
        return vocab_size
    token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    if token_id is not None and token_id != tokenizer.unk_token_id:
        return token_id
    tokenizer.add_tokens([IMAGE_TOKEN], special_tokens=True)
    token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    notes.append(f"added {IMAGE_TOKEN} to the tokenizer as special token id {token_id} (the original uses index -200)")
    return token_id


@SOURCES.register("original")
def prepare_original(arguments: LlavaConversionArguments) -> ConversionJob:
    """A job converting a haotian-liu/LLaVA checkpoint (+ the ``--encoder`` tower)."""
    input_dir = Path(arguments.input)
    source = read_json(input_dir / "config.json")
    vision_config = _load_encoder_config(arguments.encoder)
    reader = CheckpointReader(input_dir)
    notes: list[str] = [f"source: original LLaVA checkpoint (model_type '{source.get('model_type')}')"]

    tokenizer = load_tokenizer_if_present(input_dir)
    source_vocab = int(source["vocab_size"])
    image_token_id = _original_image_token(tokenizer, source_vocab, notes)
    vocab_size = max(source_vocab, image_token_id + 1)
    config, aspect = convert_original_config(source, vision_config, image_token_id, vocab_size)
    grown = ("model.language_model.embed_tokens.weight", "lm_head.weight")
    if vocab_size > source_vocab:
        notes.append(
            f"grew embed_tokens / lm_head from {source_vocab} to {vocab_size} rows (new rows: mean of the existing ones)"
        )

    def grow_vocabulary(target: str, tensor: torch.Tensor) -> torch.Tensor:
        return grow_rows_with_mean(tensor, vocab_size) if target in grown else tensor

    sources = [TensorSource(reader, ORIGINAL_KEY_TABLE)]
    if any(key.startswith(ORIGINAL_TOWER_PREFIX) for key in reader.keys()):
        notes.append("vision tower weights from the checkpoint; --encoder supplied the tower's config only")
    else:
        sources.append(TensorSource(CheckpointReader(arguments.encoder, label="encoder"), ENCODER_KEY_TABLE))
        notes.append(f"vision tower weights from --encoder {arguments.encoder}")

    processor = None
    if tokenizer is not None:
        if tokenizer.pad_token is None and tokenizer.unk_token is not None:
            tokenizer.pad_token = tokenizer.unk_token  # what LLaVA's training sets for the vicuna_v1 format
            notes.append(f"tokenizer had no pad token: set to {tokenizer.unk_token}")
        chat_template = tokenizer.chat_template
        if chat_template is None:
            chat_template = VICUNA_V1_CHAT_TEMPLATE
            notes.append("chat template: LLaVA's vicuna_v1 conversation format")
        saved_image = _saved_image_processor_settings(Path(arguments.encoder))
        if not saved_image:
            notes.append("--encoder has no preprocessor_config.json: using the tower's size with CLIP mean/std, bicubic")
        processor = ZooLlavaProcessor(
            image_processor=build_image_processor(config, saved_image, pad_to_square=aspect.pad_to_square),
            tokenizer=tokenizer,
            patch_size=vision_config.patch_size,
            vision_feature_select_strategy=config.vision_feature_select_strategy,
            num_additional_image_tokens=tower_extra_tokens(vision_config),
            image_token=IMAGE_TOKEN,
            chat_template=chat_template,
        )
    else:
        notes.append("the input has no tokenizer: no processor written")
    return ConversionJob(
        sources=sources,
        model_class=ZooLlavaForConditionalGeneration,
        config=config,
        tensor_transform=grow_vocabulary,
        notes=notes,
        save_extras=_extras_saver(processor, input_dir),
    )


# ----- entry points ---------------------------------------------------------------------------------------
def convert(arguments: LlavaConversionArguments) -> int:
    """Run the conversion the arguments describe; returns the exit code (0: every tensor accounted for)."""
    job = SOURCES.get(arguments.source)(arguments)
    return run_conversion(job, arguments)


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(LlavaConversionArguments, argv, prog="vlmzoo convert llava")
    return convert(arguments)


if __name__ == "__main__":
    sys.exit(main())
