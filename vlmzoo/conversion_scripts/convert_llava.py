"""Convert LLaVA 1.0 / 1.5 / NeXT checkpoints into vlmzoo's ``ZooLlavaForConditionalGeneration`` (docs/design.md §6).

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
  config (and its weights when the checkpoint has none) come from ``--encoder vision=DIR`` (or the bare
  ``--encoder DIR``: ``vision`` is the only encoder), a saved transformers CLIP vision model, because
  ``mm_vision_tower`` names a Hub repository. What every LLaVA-fork checkpoint shares (``mm_*`` fields, the
  -200 image index, ``<image>`` added with mean-initialised embedding rows, the vicuna_v1 chat template) is in
  ``llava_fork.py``; the machinery (arguments, staging, sharding, errors) in ``common.py``.

Usage: ``python -m vlmzoo.conversion_scripts.convert_llava --source {hf,original} --input DIR --output DIR
[--encoder [vision=]DIR] [--allow-unused KEY_REGEX ...] [--overwrite]`` or ``vlmzoo convert llava ...``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from transformers import PreTrainedConfig

from ..configuration.configuration_llava import ZooLlavaConfig
from ..modeling.modeling_llava import ZooLlavaForConditionalGeneration
from ..geometry import tokens_per_view, tower_extra_tokens
from ..modeling.vision_towers import num_feature_layers
from ..processing.processing_llava import ZooLlavaProcessor
from .common import (
    extras_saver,
    saved_chat_template,
    saved_image_processor_settings,
    CheckpointReader,
    ConversionArguments,
    ConversionError,
    ConversionJob,
    Converter,
    KeyTable,
    TensorSource,
    load_config,
    load_encoder_config,
    load_tokenizer_if_present,
    read_json,
)
from .llava_fork import (
    IMAGE_TOKEN,
    LANGUAGE_MODEL_RULES,
    PROJECTOR_RULES,
    VICUNA_V1_CHAT_TEMPLATE,  # noqa: F401  (re-exported: LLaVA 1.5's chat template)
    LlavaForkConfig,
    check_feature_layer,
    prepare_tokenizer,
    setup_image_token,
)

CONVERTER = Converter(
    "llava",
    description="Convert a LLaVA 1.0 / 1.5 / NeXT checkpoint (transformers' or the original repository's layout) "
    "into vlmzoo's ZooLlavaForConditionalGeneration.",
)
VISION_ENCODER = "vision"


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
        (r"model\.vision_tower\.vision_tower\.(?:vision_model\.)?(.+)", _TOWER_TARGETS),
        (r"model\.image_newline", r"model.image_newline.weight"),
        *PROJECTOR_RULES,  # model.mm_projector(.0/.2) -> linear_1 / linear_2
        *LANGUAGE_MODEL_RULES,  # model.* -> model.language_model.*, lm_head
    ]
)

# a saved CLIPVisionModel (transformers 5: no prefix; 4: `vision_model.`); a full CLIPModel's text half,
# projections and logit scale map to nothing in the tower and are reported as unused
ENCODER_KEY_TABLE = KeyTable([(r"(?:vision_model\.)?(.+)", _TOWER_TARGETS)])


# ----- facts about the original repository's config -------------------------------------------------------
ORIGINAL_TEXT_MODEL_TYPES = {"llava": "llama", "llava_llama": "llama", "llava_mistral": "mistral"}
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

# image-processor settings carried over from a transformers (pre)processor config
_IMAGE_PROCESSOR_FIELDS = (
    "size", "crop_size", "image_mean", "image_std", "resample", "do_resize", "do_center_crop",
    "do_rescale", "rescale_factor", "do_normalize", "do_convert_rgb",
)  # fmt: skip


# ----- helpers shared by both sources ---------------------------------------------------------------------
def view_tokens(vision_config: PreTrainedConfig, extra_tokens: int, strategy: str) -> int:
    size = vision_config.image_size
    return tokens_per_view(size, size, vision_config.patch_size, extra_tokens, strategy)


def _image_processor_settings(saved: dict) -> dict:
    """The saved image-processor fields the converted processor keeps (the rest follow the tower)."""
    return {key: saved[key] for key in _IMAGE_PROCESSOR_FIELDS if saved.get(key) is not None}


def _check_image_token(tokenizer, image_token: str, image_token_id: int, input_dir: Path) -> None:
    token_id = tokenizer.convert_tokens_to_ids(image_token)
    if token_id != image_token_id:
        raise ConversionError(
            f"the tokenizer in '{input_dir}' maps '{image_token}' to {token_id} but config.json's image_token_id is "
            f"{image_token_id}"
        )


# ----- --source hf ----------------------------------------------------------------------------------------
HF_MODEL_TYPES = ("llava", "llava_next")


def convert_hf_config(source: PreTrainedConfig, extra_tokens: int, where: str = "config.json") -> ZooLlavaConfig:
    """transformers ``LlavaConfig`` / ``LlavaNextConfig`` -> ``ZooLlavaConfig`` (mlp2x_gelu projector)."""
    if source.model_type not in HF_MODEL_TYPES:
        raise ConversionError(f"'{where}': --source hf converts model_type {list(HF_MODEL_TYPES)}, got '{source.model_type}'")
    if source.projector_hidden_act != "gelu":
        raise ConversionError(
            f"'{where}': projector_hidden_act '{source.projector_hidden_act}' is not supported: vlmzoo's mlp2x_gelu "
            f"projector uses exact GELU ('gelu')"
        )
    check_feature_layer(source.vision_feature_layer, source.vision_config, f"'{where}': vision_feature_layer")
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
        tie_word_embeddings=source.tie_word_embeddings or None,  # False: as the text config
        dtype=source.dtype,
    )


def _hf_processor(input_dir: Path, config: ZooLlavaConfig, extra_tokens: int, notes: list[str]):
    tokenizer = load_tokenizer_if_present(input_dir)
    if tokenizer is None:
        notes.append("the input has no tokenizer: no processor written")
        return None
    processor_file = input_dir / "processor_config.json"
    saved_processor = read_json(processor_file) if processor_file.is_file() else {}
    saved_image = saved_image_processor_settings(input_dir, (*_IMAGE_PROCESSOR_FIELDS, "do_pad"))
    saved_extra = saved_processor.get("num_additional_image_tokens")
    if saved_extra is not None and saved_extra != extra_tokens:
        notes.append(
            f"the input processor said num_additional_image_tokens={saved_extra}; the tower adds {extra_tokens}, "
            f"which the converted processor uses"
        )
    if not saved_image:
        notes.append("the input has no image-processor settings: using the tower's size with CLIP mean/std, bicubic")
    image_token = saved_processor.get("image_token") or getattr(tokenizer, "image_token", None) or IMAGE_TOKEN
    _check_image_token(tokenizer, image_token, config.image_token_id, input_dir)
    return ZooLlavaProcessor.from_model_config(
        config,
        tokenizer,
        image_processor_settings=_image_processor_settings(saved_image),
        pad_to_square=bool(saved_image.get("do_pad", False)),
        anyres_pad=saved_image.get("do_pad", True),
        image_token=image_token,
        chat_template=saved_chat_template(input_dir, tokenizer),
        num_additional_image_tokens=extra_tokens,
    )


@CONVERTER.source("hf", help="a transformers LlavaForConditionalGeneration / LlavaNextForConditionalGeneration "
                  "save_pretrained directory (it holds its tower: no --encoder)")
def prepare_hf(arguments: ConversionArguments) -> ConversionJob:
    """A job converting a transformers Llava / LlavaNext directory."""
    input_dir = Path(arguments.input)
    reader = CheckpointReader(input_dir, label="input")
    source_config = load_config(input_dir)
    extra_tokens = tower_extra_tokens(source_config.vision_config)
    config = convert_hf_config(source_config, extra_tokens, where=str(input_dir / "config.json"))
    notes: list[str] = [f"source: transformers {source_config.model_type} checkpoint"]
    processor = _hf_processor(input_dir, config, extra_tokens, notes)
    return ConversionJob(
        sources=[TensorSource(reader, HF_KEY_TABLE)],
        model_class=ZooLlavaForConditionalGeneration,
        config=config,
        notes=notes,
        save_extras=extras_saver(processor, input_dir),
    )


# ----- --source original ----------------------------------------------------------------------------------
def _encoder_config(arguments: ConversionArguments) -> tuple[Path, PreTrainedConfig]:
    encoder = arguments.encoders.get(VISION_ENCODER)
    if encoder is None:
        raise ConversionError(
            "--source original needs --encoder [vision=]DIR: a saved transformers CLIP vision model whose config.json "
            "describes the vision tower (mm_vision_tower names a Hub repository, which is not read); its weights are "
            "used when the checkpoint has no model.vision_tower.* tensors"
        )
    return encoder, load_encoder_config(encoder, VISION_ENCODER)


def convert_original_config(
    source: LlavaForkConfig, vision_config: PreTrainedConfig, image_token_id: int, vocab_size: int
) -> tuple[ZooLlavaConfig, OriginalAspectRatio]:
    """The original repository's config.json (+ the encoder's config) -> ``ZooLlavaConfig``."""
    source.refuse_image_start_end()
    projector_type = source.projector_type
    if projector_type not in ORIGINAL_PROJECTORS:
        raise source.error(f"mm_projector_type '{projector_type}' is not supported; supported: {list(ORIGINAL_PROJECTORS)}")
    layer = source.select_layer
    strategy = source.select_strategy
    aspect = source.choice(ORIGINAL_ASPECT_RATIOS, "image_aspect_ratio")
    merge_type = source.get("mm_patch_merge_type", "flat")
    if merge_type not in aspect.patch_merge_types:
        raise source.error(
            f"mm_patch_merge_type '{merge_type}' with image_aspect_ratio '{source.get('image_aspect_ratio')}' is not "
            f"supported; supported: {list(aspect.patch_merge_types)}"
        )
    check_feature_layer(layer, vision_config, f"'{source.path}': mm_vision_select_layer")
    mm_hidden_size = source.mm_hidden_size
    if mm_hidden_size is not None and mm_hidden_size != vision_config.hidden_size * num_feature_layers(layer):
        raise source.error(
            f"mm_hidden_size {mm_hidden_size} does not match the --encoder tower's hidden_size {vision_config.hidden_size}"
        )
    text_config = source.text_config(ORIGINAL_TEXT_MODEL_TYPES, vocab_size=vocab_size)
    extra_tokens = tower_extra_tokens(vision_config)
    config = ZooLlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_id=image_token_id,
        projector_type=projector_type,
        multimodal_projector_bias=True,
        vision_feature_layer=layer,
        vision_feature_select_strategy=strategy,
        image_grid_pinpoints=source.grid_pinpoints() if aspect.anyres else None,
        image_seq_length=view_tokens(vision_config, extra_tokens, strategy),
        tie_word_embeddings=source.tie_word_embeddings or None,  # False: as the text config
        dtype=source.dtype,
    )
    return config, aspect


@CONVERTER.source("original", help="the haotian-liu/LLaVA layout (mm_* fields in config.json); the tower's config, "
                  "and its weights when the checkpoint has none, come from --encoder", encoders=(VISION_ENCODER,))
def prepare_original(arguments: ConversionArguments) -> ConversionJob:
    """A job converting a haotian-liu/LLaVA checkpoint (+ the ``--encoder`` tower)."""
    input_dir = Path(arguments.input)
    source = LlavaForkConfig.from_directory(input_dir)
    encoder, vision_config = _encoder_config(arguments)
    reader = CheckpointReader(input_dir, label="input")
    notes: list[str] = [f"source: original LLaVA checkpoint (model_type '{source.model_type}')"]

    tokenizer = load_tokenizer_if_present(input_dir)
    image_token = setup_image_token(tokenizer, source.vocab_size, notes)
    config, aspect = convert_original_config(source, vision_config, image_token.token_id, image_token.vocab_size)

    sources = [TensorSource(reader, ORIGINAL_KEY_TABLE)]
    if any(key.startswith(ORIGINAL_TOWER_PREFIX) for key in reader.keys()):
        notes.append("vision tower weights from the checkpoint; --encoder supplied the tower's config only")
    else:
        sources.append(TensorSource(CheckpointReader(encoder, label="encoder"), ENCODER_KEY_TABLE))
        notes.append(f"vision tower weights from --encoder {encoder}")

    processor = None
    if tokenizer is not None:
        chat_template = prepare_tokenizer(tokenizer, notes, conversation="vicuna_v1")
        saved_image = saved_image_processor_settings(Path(encoder), (*_IMAGE_PROCESSOR_FIELDS, "do_pad"))
        if not saved_image:
            notes.append("--encoder has no preprocessor_config.json: using the tower's size with CLIP mean/std, bicubic")
        processor = ZooLlavaProcessor.from_model_config(
            config,
            tokenizer,
            image_processor_settings=_image_processor_settings(saved_image),
            pad_to_square=aspect.pad_to_square,
            image_token=IMAGE_TOKEN,
            chat_template=chat_template,
        )
    else:
        notes.append("the input has no tokenizer: no processor written")
    return ConversionJob(
        sources=sources,
        model_class=ZooLlavaForConditionalGeneration,
        config=config,
        tensor_transform=image_token.grow_vocabulary(),
        notes=notes,
        save_extras=extras_saver(processor, input_dir),
    )


# ----- entry points ---------------------------------------------------------------------------------------
convert = CONVERTER.run  # from Python: parse argv and convert; raises ConversionError for user errors
main = CONVERTER.main  # the command line: user errors print one line and exit 2; bugs keep their traceback


if __name__ == "__main__":
    sys.exit(main())
