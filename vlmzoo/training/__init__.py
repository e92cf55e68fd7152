"""Training helpers: stages, the chat collator, LoRA configs."""

from .collator import IGNORE_INDEX, VLMDataCollator, pack_batch
from .lora import lora_config
from .stages import recipe_learning_rate, set_training_stage, trainable_parameter_names

__all__ = [
    "IGNORE_INDEX",
    "VLMDataCollator",
    "lora_config",
    "pack_batch",
    "recipe_learning_rate",
    "set_training_stage",
    "trainable_parameter_names",
]
