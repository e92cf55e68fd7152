"""Convert InstructBLIP checkpoints into vlmzoo's ``ZooInstructBlipForConditionalGeneration`` (docs/design.md §6).

Follows InstructBLIP (Dai et al. 2023) as transformers 5.24 stores it: the BLIP-2 layout (``vision_model.*``,
``query_tokens``, ``qformer.*`` now with its word embeddings, ``language_projection.*``,
``language_model.{model,lm_head}.*``), converted by the key table of ``convert_blip2``; the processor keeps both
tokenizers (the Q-Former's is read from ``qformer_tokenizer/``).

Usage: ``python -m vlmzoo.conversion_scripts.convert_instructblip --source hf --input DIR --output DIR
[--allow-unused KEY_REGEX ...] [--overwrite]`` or ``vlmzoo convert instructblip ...``.
"""

from __future__ import annotations

import sys

from ..configuration.configuration_blip2 import ZooInstructBlipConfig
from ..modeling.modeling_instructblip import ZooInstructBlipForConditionalGeneration
from ..processing.processing_blip2 import ZooInstructBlipProcessor
from .common import ConversionArguments, ConversionJob, Converter
from .convert_blip2 import QFormerFamily, language_models_taken, prepare_hf_job

INSTRUCTBLIP = QFormerFamily(
    "instructblip",
    ZooInstructBlipConfig,
    ZooInstructBlipForConditionalGeneration,
    ZooInstructBlipProcessor,
)

CONVERTER = Converter(
    "instructblip",
    description=f"Convert a transformers InstructBLIP checkpoint ({language_models_taken(ZooInstructBlipConfig)}) "
    "into vlmzoo's ZooInstructBlipForConditionalGeneration.",
)


@CONVERTER.source("hf", help="a transformers InstructBlipForConditionalGeneration save_pretrained directory")
def prepare_hf(arguments: ConversionArguments) -> ConversionJob:
    return prepare_hf_job(arguments, INSTRUCTBLIP)


convert = CONVERTER.run
main = CONVERTER.main


if __name__ == "__main__":
    sys.exit(main())
