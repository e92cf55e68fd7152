"""Convert Qwen2-VL checkpoints into vlmzoo's ``ZooQwen2VLForConditionalGeneration`` (docs/design.md §6).

Follows Qwen2-VL (Wang et al. 2024) as transformers stores it. ``--source hf``: a directory written by transformers'
``Qwen2VLForConditionalGeneration.save_pretrained`` (e.g. a local copy of Qwen/Qwen2-VL-2B-Instruct). Its on-disk
layout is ``visual.*`` (the ViT, with the patch merger at ``visual.merger.*``), ``model.*`` (the Qwen2 decoder) and
``lm_head.weight`` (absent when tied); checkpoints written from the in-memory layout (``model.visual.*``,
``model.language_model.*``) are read too. They become ``model.vision_tower.*``, ``model.multi_modal_projector.*``
(the merger: here the family's projector), ``model.language_model.*`` and ``lm_head.*``. The config's
``Qwen2VLTextConfig`` becomes the Qwen2 decoder's config with M-RoPE's sections in ``mrope_section``; the processor
(tokenizer, chat template, image-processor settings) is converted with the weights when the input has a tokenizer.

Positions: the converted model uses the paper's (and the official code's) rule for the text after a video
(``mrope_temporal_advance=True``), with which the checkpoints were trained; transformers 5.24/5.25 start that text
earlier when a video has more merged frames than rows and columns. Pass ``--transformers-positions`` to keep
transformers' rule (identical logits to transformers for every video).

Usage: ``python -m vlmzoo.conversion_scripts.convert_qwen2_vl --source hf --input DIR --output DIR [--overwrite]``
or ``vlmzoo convert qwen2_vl ...``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from transformers import PreTrainedConfig

from ..configuration.configuration_qwen2_vl import ZooQwen2VLConfig
from ..modeling.modeling_qwen2_vl import ZooQwen2VLForConditionalGeneration
from .common import (
    CheckpointReader,
    ConversionArguments,
    ConversionError,
    ConversionJob,
    Converter,
    KeyTable,
    TensorSource,
    extras_saver,
    load_config,
    load_tokenizer_if_present,
    saved_chat_template,
    saved_image_processor_settings,
)

SOURCE_MODEL_TYPE = "qwen2_vl"

HF_KEY_TABLE = KeyTable(
    [
        # the merger first: it is the projector here, outside the tower
        (r"(?:model\.)?visual\.merger\.(.+)", r"model.multi_modal_projector.\1"),
        (r"(?:model\.)?visual\.(.+)", r"model.vision_tower.\1"),
        (r"model\.language_model\.(.+)", r"model.language_model.\1"),
        (r"model\.(.+)", r"model.language_model.\1"),
        (r"lm_head\.(.+)", r"lm_head.\1"),
    ]
)

# image-processor settings carried over from transformers' Qwen2VLImageProcessor config
_IMAGE_PROCESSOR_FIELDS = (
    "min_pixels", "max_pixels", "size", "patch_size", "temporal_patch_size", "merge_size", "image_mean", "image_std",
    "resample", "do_resize", "do_rescale", "rescale_factor", "do_normalize", "do_convert_rgb",
)  # fmt: skip


@dataclass(kw_only=True)
class Qwen2VLConversionArguments(ConversionArguments):
    transformers_positions: bool = field(
        default=False,
        metadata={"help": "keep transformers' rule for the text position after a video (mrope_temporal_advance=False) "
                  "instead of the paper's"},
    )  # fmt: skip


def convert_hf_config(source: PreTrainedConfig, where: str = "config.json", transformers_positions: bool = False):
    """transformers ``Qwen2VLConfig`` -> ``ZooQwen2VLConfig``."""
    if source.model_type != SOURCE_MODEL_TYPE:
        raise ConversionError(f"'{where}': --source hf converts model_type '{SOURCE_MODEL_TYPE}', got '{source.model_type}'")
    return ZooQwen2VLConfig(
        vision_config=source.vision_config,
        text_config=source.text_config,
        image_token_id=source.image_token_id,
        video_token_id=source.video_token_id,
        vision_start_token_id=source.vision_start_token_id,
        vision_end_token_id=getattr(source, "vision_end_token_id", None),
        mrope_temporal_advance=not transformers_positions,
        tie_word_embeddings=bool(getattr(source, "tie_word_embeddings", False)),
        dtype=source.dtype,
    )


def hf_processor(input_dir: Path, config: ZooQwen2VLConfig, notes: list[str]):
    """The converted processor, or None (with a note) when the input has no tokenizer."""
    from ..processing.processing_qwen2_vl import ZooQwen2VLProcessor

    tokenizer = load_tokenizer_if_present(input_dir)
    if tokenizer is None:
        notes.append("the input has no tokenizer: no processor written")
        return None
    for name, token in (("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>")):
        token_id = tokenizer.convert_tokens_to_ids(token)
        if token_id != getattr(config, name):
            raise ConversionError(
                f"the tokenizer in '{input_dir}' maps '{token}' to {token_id} but config.json's {name} is "
                f"{getattr(config, name)}"
            )
    settings = saved_image_processor_settings(input_dir, _IMAGE_PROCESSOR_FIELDS)
    if not settings:
        notes.append("the input has no image-processor settings: using Qwen2-VL's defaults")
    return ZooQwen2VLProcessor.from_model_config(
        config, tokenizer, image_processor_settings=settings, chat_template=saved_chat_template(input_dir, tokenizer)
    )


CONVERTER = Converter(
    "qwen2_vl",
    description="Convert a transformers Qwen2-VL checkpoint into vlmzoo's ZooQwen2VLForConditionalGeneration.",
    arguments_class=Qwen2VLConversionArguments,
)


@CONVERTER.source("hf", help="a transformers Qwen2VLForConditionalGeneration save_pretrained directory")
def prepare_hf(arguments: Qwen2VLConversionArguments) -> ConversionJob:
    input_dir = Path(arguments.input)
    reader = CheckpointReader(input_dir, label="input")
    source_config = load_config(input_dir)
    config = convert_hf_config(
        source_config, where=str(input_dir / "config.json"), transformers_positions=arguments.transformers_positions
    )
    notes: list[str] = [f"source: transformers {source_config.model_type} checkpoint"]
    processor = hf_processor(input_dir, config, notes)
    return ConversionJob(
        sources=[TensorSource(reader, HF_KEY_TABLE)],
        model_class=ZooQwen2VLForConditionalGeneration,
        config=config,
        notes=notes,
        save_extras=extras_saver(processor, input_dir),
    )


convert = CONVERTER.run  # from Python: parse argv and convert; raises ConversionError for user errors
main = CONVERTER.main  # the command line: user errors print one line and exit 2


if __name__ == "__main__":
    sys.exit(main())
