"""Typed configurations, one module per family."""

from .configuration_base import ZooVLMConfig
from .configuration_blip2 import ZooBlip2Config, ZooInstructBlipConfig
from .configuration_llava import ZooLlavaConfig

__all__ = ["ZooVLMConfig", "ZooLlavaConfig", "ZooBlip2Config", "ZooInstructBlipConfig"]
