"""vlmzoo: vision-language model architectures as native Hugging Face transformers models.

``import vlmzoo`` registers every family with the transformers Auto classes (see ``vlmzoo.auto``).
"""

import transformers as _transformers

from .versions import check_transformers_version as _check_transformers_version

_check_transformers_version(_transformers.__version__)

# the imports below need the version check above to have passed
from .auto import FAMILIES, AutoModelForVision2Seq, get_family  # noqa: E402
from .configuration import ZooBlip2Config, ZooInstructBlipConfig, ZooLlavaConfig, ZooVLMConfig  # noqa: E402
from .modeling.modeling_blip2 import (  # noqa: E402
    ZooBlip2ForConditionalGeneration,
    ZooBlip2Model,
    ZooBlip2PreTrainedModel,
)
from .modeling.modeling_blip2_pretraining import ZooBlip2ForQFormerPretraining  # noqa: E402
from .modeling.modeling_instructblip import (  # noqa: E402
    ZooInstructBlipForConditionalGeneration,
    ZooInstructBlipModel,
    ZooInstructBlipPreTrainedModel,
)
from .modeling.modeling_base import ZooVLMForConditionalGeneration, ZooVLMModel  # noqa: E402
from .modeling.modeling_llava import (  # noqa: E402
    ZooLlavaForConditionalGeneration,
    ZooLlavaModel,
    ZooLlavaPreTrainedModel,
)
from .processing import (  # noqa: E402
    ZooAnyResImageProcessor,
    ZooBlip2Processor,
    ZooFixedResImageProcessor,
    ZooInstructBlipProcessor,
    ZooLlavaProcessor,
    ZooResizeImageProcessor,
)

__version__ = "0.1.0"

__all__ = [
    "FAMILIES",
    "AutoModelForVision2Seq",
    "get_family",
    "ZooVLMConfig",
    "ZooVLMModel",
    "ZooVLMForConditionalGeneration",
    "ZooLlavaConfig",
    "ZooLlavaModel",
    "ZooLlavaPreTrainedModel",
    "ZooLlavaForConditionalGeneration",
    "ZooLlavaProcessor",
    "ZooFixedResImageProcessor",
    "ZooAnyResImageProcessor",
    "ZooResizeImageProcessor",
    "ZooBlip2Config",
    "ZooBlip2Model",
    "ZooBlip2PreTrainedModel",
    "ZooBlip2ForConditionalGeneration",
    "ZooBlip2ForQFormerPretraining",
    "ZooBlip2Processor",
    "ZooInstructBlipConfig",
    "ZooInstructBlipModel",
    "ZooInstructBlipPreTrainedModel",
    "ZooInstructBlipForConditionalGeneration",
    "ZooInstructBlipProcessor",
]
