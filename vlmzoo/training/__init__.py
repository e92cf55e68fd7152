"""Training helpers: stages, the chat collator, LoRA configs."""

from .collator import IGNORE_INDEX, VLMDataCollator
from .lora import lora_config
from .stages import RECIPE_LEARNING_RATES, set_training_stage, trainable_parameter_names

__all__ = [
    "IGNORE_INDEX",
    "VLMDataCollator",
    "lora_config",
    "RECIPE_LEARNING_RATES",
    "set_training_stage",
    "trainable_parameter_names",
]
