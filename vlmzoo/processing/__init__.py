"""Image processors, resolution strategies and processors."""

from .image_processing_anyres import ZooAnyResImageProcessor
from .image_processing_fixed import ZooFixedResImageProcessor
from .image_processing_resize import ZooResizeImageProcessor
from .processing_blip2 import ZooBlip2Processor, ZooInstructBlipProcessor
from .processing_llava import ZooLlavaProcessor

__all__ = [
    "ZooAnyResImageProcessor",
    "ZooFixedResImageProcessor",
    "ZooLlavaProcessor",
    "ZooResizeImageProcessor",
    "ZooBlip2Processor",
    "ZooInstructBlipProcessor",
]
