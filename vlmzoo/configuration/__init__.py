"""Typed configurations, one module per family."""

from .configuration_base import ZooVLMConfig
from .configuration_llava import ZooLlavaConfig

__all__ = ["ZooVLMConfig", "ZooLlavaConfig"]
