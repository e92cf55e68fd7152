"""Convert BLIP-2 checkpoints into vlmzoo's ``ZooBlip2ForConditionalGeneration`` (docs/design.md §6).

Follows BLIP-2 (Li et al. 2023) as transformers 5.24 stores it. ``--source hf``: a directory written by
transformers' ``Blip2ForConditionalGeneration.save_pretrained`` (e.g. a local copy of Salesforce/blip2-opt-2.7b),
whose on-disk layout is ``vision_model.*``, ``query_tokens`` (1, Q, width), ``qformer.*``,
``language_projection.*`` and ``language_model.{model,lm_head}.*`` (the LM head is absent when it is tied to the
embeddings). They become ``model.vision_tower.*``, ``model.query_tokens.weight`` (Q, width),
``model.qformer.*``, ``model.multi_modal_projector.*``, ``model.language_model.*`` and ``lm_head.*``. The
processor (tokenizer, image-processor settings, ``num_query_tokens``) is converted with the weights.
``convert_instructblip`` reuses this module with InstructBLIP's classes and its second (Q-Former) tokenizer.

Usage: ``python -m vlmzoo.conversion_scripts.convert_blip2 --source hf --input DIR --output DIR
[--allow-unused KEY_REGEX ...] [--overwrite]`` or ``vlmzoo convert blip2 ...``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedConfig

from ..configuration.configuration_blip2 import ZooBlip2Config
from ..modeling.modeling_blip2 import ZooBlip2ForConditionalGeneration
from ..processing.processing_blip2 import ZooBlip2Processor
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
    Split,
    TensorSource,
    load_config,
    load_tokenizer_if_present,
)

IMAGE_TOKEN = "<image>"


def _drop_batch_dim(tensor: torch.Tensor) -> list[torch.Tensor]:
    """transformers' ``query_tokens`` (1, Q, width) -> vlmzoo's ``LearnedTokens`` weight (Q, width)."""
    if tensor.dim() != 3 or tensor.shape[0] != 1:
        raise ConversionError(f"query_tokens must be (1, num_query_tokens, width), got {tuple(tensor.shape)}")
    return [tensor[0]]


HF_KEY_TABLE = KeyTable(
    [
        (r"vision_model\.(.+)", r"model.vision_tower.\1"),
        Split(r"query_tokens", ["model.query_tokens.weight"], fn=_drop_batch_dim),
        (r"qformer\.(.+)", r"model.qformer.\1"),
        (r"language_projection\.(.+)", r"model.multi_modal_projector.\1"),
        (r"language_model\.lm_head\.(.+)", r"lm_head.\1"),
        (r"language_model\.model\.(.+)", r"model.language_model.\1"),
        # an encoder-decoder LM (Flan-T5) is stored without the `model.` level
        (r"language_model\.((?:shared|encoder|decoder)\..+)", r"model.language_model.\1"),
    ]
)

# image-processor settings carried over from transformers' BlipImageProcessor config
_IMAGE_PROCESSOR_FIELDS = (
    "size", "image_mean", "image_std", "resample", "do_resize", "do_rescale", "rescale_factor", "do_normalize",
    "do_convert_rgb",
)  # fmt: skip


@dataclass(frozen=True)
class QFormerFamily:
    """What differs between the BLIP-2 and InstructBLIP conversions."""

    source_model_type: str
    config_class: type
    model_class: type
    processor_class: type


BLIP2 = QFormerFamily("blip-2", ZooBlip2Config, ZooBlip2ForConditionalGeneration, ZooBlip2Processor)


def language_models_taken(config_class: type) -> str:
    """The LM kinds a Q-Former family's converter takes, for its ``--help`` (read from the config class)."""
    encoder_decoders = ", ".join(config_class.encoder_decoder_language_models)
    return f"a decoder-only LM such as OPT, or an encoder-decoder LM ({encoder_decoders}) such as Flan-T5"


def convert_hf_config(source: PreTrainedConfig, family: QFormerFamily, where: str = "config.json"):
    """transformers ``Blip2Config`` / ``InstructBlipConfig`` -> the family's vlmzoo config."""
    if source.model_type != family.source_model_type:
        raise ConversionError(
            f"'{where}': --source hf converts model_type '{family.source_model_type}', got '{source.model_type}'"
        )
    if source.image_token_index is None:
        raise ConversionError(
            f"'{where}': image_token_index is not set; re-save the checkpoint with a transformers version whose "
            f"processor adds the <image> token (>= 4.47)"
        )
    return family.config_class(
        vision_config=source.vision_config,
        qformer_config=source.qformer_config,
        text_config=source.text_config,
        num_query_tokens=source.num_query_tokens,
        image_token_id=source.image_token_index,
        initializer_range=source.initializer_range,
        # as the text config; a head stored apart with other values (Flan-T5) is untied by the conversion itself
        tie_word_embeddings=getattr(source, "tie_word_embeddings", None) or None,
        dtype=source.dtype,
    )


def hf_processor(input_dir: Path, config, family: QFormerFamily, notes: list[str]):
    """The converted processor, or None (with a note) when the input has no tokenizer."""
    tokenizer = load_tokenizer_if_present(input_dir)
    if tokenizer is None:
        notes.append("the input has no tokenizer: no processor written")
        return None
    image_token = str(getattr(tokenizer, "image_token", None) or IMAGE_TOKEN)
    token_id = tokenizer.convert_tokens_to_ids(image_token)
    if token_id != config.image_token_id:
        raise ConversionError(
            f"the tokenizer in '{input_dir}' maps '{image_token}' to {token_id} but config.json's image_token_index "
            f"is {config.image_token_id}"
        )
    extras = {}
    for name in family.processor_class.extra_tokenizers:  # e.g. InstructBLIP's Q-Former tokenizer
        extra_tokenizer = load_tokenizer_if_present(input_dir / name)
        if extra_tokenizer is None:
            raise ConversionError(
                f"'{input_dir}' has a tokenizer but no {name}/ ({family.processor_class.__name__} needs both)"
            )
        extras[name] = extra_tokenizer
    settings = saved_image_processor_settings(input_dir, _IMAGE_PROCESSOR_FIELDS)
    if not settings:
        notes.append("the input has no image-processor settings: using the tower's size with CLIP mean/std, bicubic")
    return family.processor_class.from_model_config(
        config,
        tokenizer,
        image_processor_settings=settings,
        image_token=image_token,
        chat_template=saved_chat_template(input_dir),
        **extras,
    )


def prepare_hf_job(arguments: ConversionArguments, family: QFormerFamily) -> ConversionJob:
    """A job converting a transformers BLIP-2 / InstructBLIP ``save_pretrained`` directory."""
    input_dir = Path(arguments.input)
    reader = CheckpointReader(input_dir, label="input")
    source_config = load_config(input_dir)
    config = convert_hf_config(source_config, family, where=str(input_dir / "config.json"))
    notes: list[str] = [f"source: transformers {source_config.model_type} checkpoint"]
    processor = hf_processor(input_dir, config, family, notes)
    return ConversionJob(
        sources=[TensorSource(reader, HF_KEY_TABLE)],
        model_class=family.model_class,
        config=config,
        notes=notes,
        save_extras=extras_saver(processor, input_dir),
    )


CONVERTER = Converter(
    "blip2",
    description=f"Convert a transformers BLIP-2 checkpoint ({language_models_taken(ZooBlip2Config)}) into vlmzoo's "
    "ZooBlip2ForConditionalGeneration.",
)


@CONVERTER.source("hf", help="a transformers Blip2ForConditionalGeneration save_pretrained directory")
def prepare_hf(arguments: ConversionArguments) -> ConversionJob:
    return prepare_hf_job(arguments, BLIP2)


convert = CONVERTER.run  # from Python: parse argv and convert; raises ConversionError for user errors
main = CONVERTER.main  # the command line: user errors print one line and exit 2


if __name__ == "__main__":
    sys.exit(main())
