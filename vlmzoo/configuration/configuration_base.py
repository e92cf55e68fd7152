"""Fields every vlmzoo config shares: the training-stage table (DESIGN.md §5) and the image token.

Each family config subclasses :class:`ZooVLMConfig` and sets ``default_training_stages`` to its paper's
recipe; ``training_stages`` stored in the config (and in ``config.json``) overrides it.
"""

from __future__ import annotations

from typing import ClassVar

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig


@strict
class ZooVLMConfig(PreTrainedConfig):
    """Base of the family configs: holds ``training_stages`` and validates it against ``stage_components``."""

    # component names a stage may list; families override
    stage_components: ClassVar[tuple[str, ...]] = ()
    default_training_stages: ClassVar[dict[str, list[str]]] = {}

    training_stages: dict | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.training_stages is None:
            self.training_stages = {name: list(parts) for name, parts in self.default_training_stages.items()}
        for stage, components in self.training_stages.items():
            unknown = [c for c in components if c not in self.stage_components]
            if unknown:
                raise ValueError(
                    f"training stage '{stage}' names unknown components {unknown}; "
                    f"valid components: {list(self.stage_components)}"
                )
