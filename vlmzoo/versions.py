"""The transformers versions vlmzoo supports, checked before anything imports transformers' internals.

vlmzoo follows transformers 5.24's conventions (``cache`` instead of ``past_key_values``, the multimodal
output classes with ``image_outputs``), which earlier releases do not have; an older transformers would
fail deep inside a forward, so ``import vlmzoo`` refuses it up front with both versions named.
"""

from __future__ import annotations

from packaging.version import Version

MIN_TRANSFORMERS = "5.24.0"
NEXT_MAJOR = "6"


def check_transformers_version(installed: str) -> None:
    """``ImportError`` unless ``MIN_TRANSFORMERS <= installed < NEXT_MAJOR``."""
    version = Version(installed)
    if version < Version(MIN_TRANSFORMERS) or version.major >= int(NEXT_MAJOR):
        raise ImportError(
            f"vlmzoo needs transformers>={MIN_TRANSFORMERS},<{NEXT_MAJOR}, but transformers {installed} is installed; "
            f"run `pip install 'transformers>={MIN_TRANSFORMERS},<{NEXT_MAJOR}'`"
        )
