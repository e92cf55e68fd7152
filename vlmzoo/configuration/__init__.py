"""Typed configurations: the shared base (``configuration_base``), then one ``configuration_<family>.py`` per
family, which also declares the family's presets (``vlmzoo.presets.register_preset``) and demo settings.

``vlmzoo.auto``'s family table imports each family's config class from its own module, and ``vlmzoo`` exports
them; nothing here lists the families (docs/design.md §3).
"""

from .configuration_base import ZooVLMConfig

__all__ = ["ZooVLMConfig"]
