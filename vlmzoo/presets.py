"""Named configurations, looked up here and declared by each family in its configuration file (docs/design.md §3).

A family declares its presets (``tiny`` ones for tests and demos, built offline; the papers' sizes, config only)
beside its config class, with :func:`register_preset`::

    @register_preset(ZooLlavaConfig, "tiny")
    def _tiny() -> dict:
        tokenizer = build_tiny_tokenizer()
        return {"vision_config": {...}, "text_config": {...}, "image_token_id": ...}

The function returns the config's keyword arguments; ``get_config(family, preset, **overrides)`` passes them,
with the overrides on top, to the family's config class. Presets belong to exactly that class (a subclass's
family does not inherit them). ``get_processor(family, preset)`` returns a matching processor whose tokenizers
are ``vlmzoo.tiny_tokenizer``'s small in-memory BPE (the processor class names any extra tokenizers it takes
in ``extra_tokenizers``). Nothing is downloaded.

This module imports neither the configurations nor the family table at import time (the configuration files
import it); the table is read when a preset is looked up.
"""

from __future__ import annotations

from collections.abc import Callable

from .registry import Registry
from .tiny_tokenizer import (  # noqa: F401  (re-exported: the presets' tokenizer facts)
    CHAT_TEMPLATE,
    IMAGE_TOKEN,
    SPECIAL_TOKENS,
    _tiny_tokenizer_json,
    build_tiny_tokenizer,
)

PresetBuilder = Callable[[], dict]

# config class -> its presets (name -> the function returning the config's keyword arguments)
PRESETS: dict[type, Registry[PresetBuilder]] = {}


def register_preset(config_class: type, name: str) -> Callable[[PresetBuilder], PresetBuilder]:
    """Decorator: the function (no arguments, returns a dict of config kwargs) is preset ``name`` of the family
    whose config class is ``config_class``. A second preset of the same name for the same class is refused."""
    if not isinstance(config_class, type):
        raise TypeError(f"register_preset takes the family's config class first, got {config_class!r}")
    if not isinstance(name, str) or not name:
        raise TypeError(f"a preset name is a non-empty string, got {name!r}")
    registry = PRESETS.setdefault(config_class, Registry(f"{config_class.__name__} preset"))
    return registry.register(name)


def _config_class(family: str) -> type:
    from .auto import get_family  # the table imports the configuration files, which import this module

    return get_family(family).config_class


def preset_names(family: str) -> list[str]:
    """The presets a family has, sorted (``ValueError`` for an unknown family)."""
    registry = PRESETS.get(_config_class(family))
    return registry.keys() if registry is not None else []


def get_config(family: str, preset: str = "tiny", **overrides):
    """Config of ``family`` (e.g. ``"llava"``) at ``preset`` (e.g. ``"tiny"``, ``"llava-1.5-7b"``), with
    ``overrides`` (config keyword arguments) on top of the preset's."""
    config_class = _config_class(family)
    registry = PRESETS.get(config_class)
    if registry is None or preset not in registry:
        raise ValueError(f"unknown preset '{preset}' for family '{family}'; valid presets: {preset_names(family)}")
    return config_class(**{**registry.get(preset)(), **overrides})


def get_processor(family: str, preset: str = "tiny", config=None):
    """Processor matching ``get_config(family, preset)`` (or ``config``): the tiny tokenizer (with the processor
    class's ``tiny_tokenizer_options``), one tiny tokenizer per entry of its ``extra_tokenizers`` (with its options),
    the config's image processor."""
    from .auto import get_family

    config = config if config is not None else get_config(family, preset)
    processor_class = get_family(family).processor_class
    extras = {name: build_tiny_tokenizer(**options) for name, options in processor_class.extra_tokenizers.items()}
    tokenizer = build_tiny_tokenizer(**processor_class.tiny_tokenizer_options)
    return processor_class.from_model_config(config, tokenizer, **extras)


__all__ = ["PRESETS", "build_tiny_tokenizer", "get_config", "get_processor", "preset_names", "register_preset"]
