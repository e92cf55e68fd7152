"""One table of families -> config, model and processor classes, registered with the transformers Auto classes.

Importing this module (``import vlmzoo`` does) makes ``AutoConfig``, ``AutoModel``,
``AutoModelForImageTextToText``, ``AutoModelForMultimodalLM``, ``AutoProcessor`` and ``AutoImageProcessor``
resolve every vlmzoo ``model_type``. ``AutoModelForVision2Seq`` restores the name transformers 5 removed,
with the same mapping as ``AutoModelForImageTextToText``.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageTextToText,
    AutoModelForMultimodalLM,
    AutoProcessor,
    PreTrainedConfig,
)
from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING

from .configuration import ZooBlip2Config, ZooInstructBlipConfig, ZooLlavaConfig
from .modeling.modeling_blip2 import ZooBlip2ForConditionalGeneration, ZooBlip2Model
from .modeling.modeling_instructblip import ZooInstructBlipForConditionalGeneration, ZooInstructBlipModel
from .modeling.modeling_llava import ZooLlavaForConditionalGeneration, ZooLlavaModel
from .processing import (
    ZooAnyResImageProcessor,
    ZooBlip2Processor,
    ZooFixedResImageProcessor,
    ZooInstructBlipProcessor,
    ZooLlavaProcessor,
    ZooResizeImageProcessor,
)
from .registry import Registry


@dataclass(frozen=True)
class Family:
    """The classes of one architecture family."""

    key: str
    config_class: type[PreTrainedConfig]
    model_class: type
    for_generation_class: type
    processor_class: type
    image_processor_classes: tuple[type, ...]  # the first is the AutoImageProcessor default


FAMILIES: Registry = Registry("family")


def register_family(family: Family) -> Family:
    """Add a family to the table and to every transformers Auto class."""
    FAMILIES.register(family.key)(family)
    config = family.config_class
    AutoConfig.register(config.model_type, config, exist_ok=True)
    AutoModel.register(config, family.model_class, exist_ok=True)
    AutoModelForImageTextToText.register(config, family.for_generation_class, exist_ok=True)
    AutoModelForMultimodalLM.register(config, family.for_generation_class, exist_ok=True)
    AutoProcessor.register(config, family.processor_class, exist_ok=True)
    AutoImageProcessor.register(config, image_processor_classes={"pil": family.image_processor_classes[0]}, exist_ok=True)
    for image_processor in family.image_processor_classes:
        # Lets AutoImageProcessor find each of them by the class name saved in processor configs. There is no
        # public path for this: AutoImageProcessor.register keys by config class, and a second class in that
        # backend mapping would resolve to the mapping's "pil" entry. Keyed by class name, each resolves to
        # itself; tests/test_common.py (test_save_and_auto_load_give_identical_logits) checks this on the pinned
        # transformers for every preset's image processor.
        IMAGE_PROCESSOR_MAPPING.register(image_processor.__name__, {"pil": image_processor}, exist_ok=True)
    return family


register_family(
    Family(
        key="llava",
        config_class=ZooLlavaConfig,
        model_class=ZooLlavaModel,
        for_generation_class=ZooLlavaForConditionalGeneration,
        processor_class=ZooLlavaProcessor,
        image_processor_classes=(ZooFixedResImageProcessor, ZooAnyResImageProcessor),
    )
)

register_family(
    Family(
        key="blip2",
        config_class=ZooBlip2Config,
        model_class=ZooBlip2Model,
        for_generation_class=ZooBlip2ForConditionalGeneration,
        processor_class=ZooBlip2Processor,
        image_processor_classes=(ZooResizeImageProcessor,),
    )
)

register_family(
    Family(
        key="instructblip",
        config_class=ZooInstructBlipConfig,
        model_class=ZooInstructBlipModel,
        for_generation_class=ZooInstructBlipForConditionalGeneration,
        processor_class=ZooInstructBlipProcessor,
        image_processor_classes=(ZooResizeImageProcessor,),
    )
)


class AutoModelForVision2Seq(AutoModelForImageTextToText):
    """transformers 4's name for image-text-to-text models; same mapping as ``AutoModelForImageTextToText``."""


def get_family(key: str) -> Family:
    """The family registered under ``key`` (``ValueError`` lists the valid keys)."""
    return FAMILIES.get(key)


__all__ = ["FAMILIES", "Family", "AutoModelForVision2Seq", "get_family", "register_family"]
