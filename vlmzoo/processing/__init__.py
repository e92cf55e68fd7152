"""Image processors, resolution strategies and processors: shared modules, then one room per family.

Shared: ``image_transforms`` (resolution strategies and torch-free geometry), ``image_processing_common``,
``processing_common`` (``ZooProcessorMixin``, the base and hooks every processor inherits) and
``chat_templates``. Each family's processor lives in ``processing_<family>.py`` with the image processors it
uses; ``vlmzoo.auto``'s family table imports them from there, and ``vlmzoo`` exports them. Nothing here lists
the families (docs/design.md §3).
"""

from .processing_common import ZooProcessorMixin

__all__ = ["ZooProcessorMixin"]
