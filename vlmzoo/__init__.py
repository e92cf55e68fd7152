"""vlmzoo: vision-language model architectures as native Hugging Face transformers models.

``import vlmzoo`` registers every family with the transformers Auto classes (see ``vlmzoo.auto``).
"""

from .auto import FAMILIES, AutoModelForVision2Seq, get_family
from .configuration import ZooLlavaConfig
from .modeling.modeling_llava import ZooLlavaForConditionalGeneration, ZooLlavaModel, ZooLlavaPreTrainedModel
from .processing import ZooAnyResImageProcessor, ZooFixedResImageProcessor, ZooLlavaProcessor

__version__ = "0.1.0"

__all__ = [
    "FAMILIES",
    "AutoModelForVision2Seq",
    "get_family",
    "ZooLlavaConfig",
    "ZooLlavaModel",
    "ZooLlavaPreTrainedModel",
    "ZooLlavaForConditionalGeneration",
    "ZooLlavaProcessor",
    "ZooFixedResImageProcessor",
    "ZooAnyResImageProcessor",
]
