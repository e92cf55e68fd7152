"""Image processors, resolution strategies and processors."""

from .image_processing_anyres import ZooAnyResImageProcessor
from .image_processing_fixed import ZooFixedResImageProcessor
from .processing_llava import ZooLlavaProcessor

__all__ = ["ZooAnyResImageProcessor", "ZooFixedResImageProcessor", "ZooLlavaProcessor"]
