"""vlmzoo: vision-language model architectures as native Hugging Face transformers models.

``import vlmzoo`` registers every family with the transformers Auto classes (see ``vlmzoo.auto``) and exports
the shared classes and each family's public classes, read from the family table (``Family.public_classes``):
``from vlmzoo import Zoo<Family>Config`` and ``vlmzoo.Zoo<Family>ForConditionalGeneration`` work for every
family without this file naming any (docs/design.md §3).
"""

import transformers as _transformers

from .versions import check_transformers_version as _check_transformers_version

_check_transformers_version(_transformers.__version__)

# the imports below need the version check above to have passed
from .auto import FAMILIES, FAMILY_TABLE, AutoModelForVision2Seq, get_family  # noqa: E402
from .configuration.configuration_base import ZooVLMConfig  # noqa: E402
from .modeling.modeling_base import ZooVLMForConditionalGeneration, ZooVLMModel  # noqa: E402

__version__ = "0.1.0"


def _family_exports() -> dict[str, type]:
    """Class name -> class for every public class of the table's families (a name two families share once)."""
    exports: dict[str, type] = {}
    for family in FAMILY_TABLE:
        for public_class in family.public_classes:
            if exports.setdefault(public_class.__name__, public_class) is not public_class:
                raise ImportError(f"two families export different classes named {public_class.__name__}")
    return exports


_FAMILY_EXPORTS = _family_exports()
globals().update(_FAMILY_EXPORTS)

__all__ = [
    "FAMILIES",
    "AutoModelForVision2Seq",
    "get_family",
    "ZooVLMConfig",
    "ZooVLMModel",
    "ZooVLMForConditionalGeneration",
    *_FAMILY_EXPORTS,
]
