"""The family table: family key -> config, model, processor and image processor classes (docs/design.md §3).

This is the one shared place a new family is entered (docs/adding_a_family.md): one :class:`Family` in
``FAMILY_TABLE``, its classes imported from the family's own modules. Everything else derives from the table:
``register_family`` registers each entry with transformers' ``AutoConfig``, ``AutoModel``,
``AutoModelForImageTextToText``, ``AutoModelForMultimodalLM``, ``AutoProcessor`` and ``AutoImageProcessor``
(importing this module, as ``import vlmzoo`` does, makes every vlmzoo ``model_type`` resolve); ``vlmzoo``
exports each entry's ``public_classes``; the tests and the demo iterate ``FAMILIES``. What a family needs beyond
its classes (presets, demo settings, input checks, extra tokenizers, the collator's hook) it declares in its own
files. ``AutoModelForVision2Seq`` restores the name transformers 5 removed, with the same mapping as
``AutoModelForImageTextToText``.
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

from .configuration.configuration_blip2 import ZooBlip2Config, ZooInstructBlipConfig
from .configuration.configuration_llava import ZooLlavaConfig
from .configuration.configuration_qwen2_vl import ZooQwen2VLConfig
from .modeling.modeling_blip2 import ZooBlip2ForConditionalGeneration, ZooBlip2Model, ZooBlip2PreTrainedModel
from .modeling.modeling_blip2_pretraining import ZooBlip2ForQFormerPretraining
from .modeling.modeling_instructblip import (
    ZooInstructBlipForConditionalGeneration,
    ZooInstructBlipModel,
    ZooInstructBlipPreTrainedModel,
)
from .modeling.modeling_llava import ZooLlavaForConditionalGeneration, ZooLlavaModel, ZooLlavaPreTrainedModel
from .modeling.modeling_qwen2_vl import (
    ZooQwen2VLForConditionalGeneration,
    ZooQwen2VLModel,
    ZooQwen2VLPreTrainedModel,
)
from .processing.image_processing_anyres import ZooAnyResImageProcessor
from .processing.image_processing_fixed import ZooFixedResImageProcessor
from .processing.image_processing_resize import ZooResizeImageProcessor
from .processing.processing_blip2 import ZooBlip2Processor, ZooInstructBlipProcessor
from .processing.processing_llava import ZooLlavaProcessor
from .processing.processing_qwen2_vl import ZooQwen2VLProcessor
from .processing.image_processing_qwen2_vl import ZooDynamicResolutionImageProcessor
from .registry import Registry


@dataclass(frozen=True)
class Family:
    """The classes of one architecture family (one entry of the family table).

    ``key``: the family key (``model_type`` is ``vlmzoo_<key>``). ``image_processor_classes``: the first is the
    ``AutoImageProcessor`` default; every one is found by its class name in saved processor configs.
    ``extra_classes``: the family's other public classes (its ``PreTrainedModel`` base, extra heads), exported by
    ``vlmzoo``. ``file_aliases``: words other than the key that name this family's modules (``modeling_qformer.py``
    belongs to every family listing ``qformer``); tests/test_layout.py reads them (docs/adding_a_family.md).
    """

    key: str
    config_class: type[PreTrainedConfig]
    model_class: type
    for_generation_class: type
    processor_class: type
    image_processor_classes: tuple[type, ...]  # the first is the AutoImageProcessor default
    extra_classes: tuple[type, ...] = ()
    file_aliases: tuple[str, ...] = ()

    @property
    def public_classes(self) -> tuple[type, ...]:
        """Every class of the family that ``vlmzoo`` exports, in a fixed order, without repeats."""
        classes = (self.config_class, self.model_class, *self.extra_classes, self.for_generation_class,
                   self.processor_class, *self.image_processor_classes)  # fmt: skip
        return tuple(dict.fromkeys(classes))


FAMILIES: Registry = Registry("family")


def register_family(family: Family) -> Family:
    """Add a family to ``FAMILIES`` and to every transformers Auto class (the table's entries come through here;
    so do families defined elsewhere, e.g. the tests' own)."""
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


# ----- the family table (the one place that names every family) ------------------------------------------
FAMILY_TABLE: tuple[Family, ...] = (
    Family(
        key="llava",
        config_class=ZooLlavaConfig,
        model_class=ZooLlavaModel,
        for_generation_class=ZooLlavaForConditionalGeneration,
        processor_class=ZooLlavaProcessor,
        image_processor_classes=(ZooFixedResImageProcessor, ZooAnyResImageProcessor),
        extra_classes=(ZooLlavaPreTrainedModel,),
    ),
    Family(
        key="blip2",
        config_class=ZooBlip2Config,
        model_class=ZooBlip2Model,
        for_generation_class=ZooBlip2ForConditionalGeneration,
        processor_class=ZooBlip2Processor,
        image_processor_classes=(ZooResizeImageProcessor,),
        extra_classes=(ZooBlip2PreTrainedModel, ZooBlip2ForQFormerPretraining),
        file_aliases=("qformer",),
    ),
    Family(
        key="instructblip",
        config_class=ZooInstructBlipConfig,
        model_class=ZooInstructBlipModel,
        for_generation_class=ZooInstructBlipForConditionalGeneration,
        processor_class=ZooInstructBlipProcessor,
        image_processor_classes=(ZooResizeImageProcessor,),
        extra_classes=(ZooInstructBlipPreTrainedModel,),
        file_aliases=("qformer",),
    ),
    Family(
        key="qwen2_vl",
        config_class=ZooQwen2VLConfig,
        model_class=ZooQwen2VLModel,
        for_generation_class=ZooQwen2VLForConditionalGeneration,
        processor_class=ZooQwen2VLProcessor,
        image_processor_classes=(ZooDynamicResolutionImageProcessor,),
        extra_classes=(ZooQwen2VLPreTrainedModel,),
    ),
)
# --------------------------------------------------------------------------------------------------------

for _family in FAMILY_TABLE:
    register_family(_family)
del _family


class AutoModelForVision2Seq(AutoModelForImageTextToText):
    """transformers 4's name for image-text-to-text models; same mapping as ``AutoModelForImageTextToText``."""


def get_family(key: str) -> Family:
    """The family registered under ``key`` (``ValueError`` lists the valid keys)."""
    return FAMILIES.get(key)


def default_family() -> str:
    """The key of the table's first family (the demo's default)."""
    return FAMILY_TABLE[0].key


__all__ = [
    "FAMILIES",
    "FAMILY_TABLE",
    "Family",
    "AutoModelForVision2Seq",
    "default_family",
    "get_family",
    "register_family",
]
