"""vlmzoo: vision-language model architectures as native Hugging Face transformers models.

``import vlmzoo`` registers every family with the transformers Auto classes (see ``vlmzoo.auto``) and exports
the shared classes and each family's public classes, read from the family table (``Family.public_classes``):
``from vlmzoo import Zoo<Family>Config`` and ``vlmzoo.Zoo<Family>ForConditionalGeneration`` work for every
family without this file naming any (docs/design.md §3).

Importing is cheap, so that ``vlmzoo --help`` answers at once: this file checks the installed transformers
version (from its package metadata) and defers the rest. The families are registered the moment transformers
is imported (at once when it already is), and no later than when the import of a vlmzoo module that needs it
has finished, so no Auto class can be used before they are; the exported names load on first use (PEP 562).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.metadata
import sys
import threading

from .versions import check_transformers_version as _check_transformers_version

__version__ = "0.1.0"

# names this file exports besides the families' classes, and where they live
_SHARED_EXPORTS = {
    "FAMILIES": "vlmzoo.auto",
    "FAMILY_TABLE": "vlmzoo.auto",
    "AutoModelForVision2Seq": "vlmzoo.auto",
    "get_family": "vlmzoo.auto",
    "ZooVLMConfig": "vlmzoo.configuration.configuration_base",
    "ZooVLMModel": "vlmzoo.modeling.modeling_base",
    "ZooVLMForConditionalGeneration": "vlmzoo.modeling.modeling_base",
}
_UNLISTED = {"FAMILY_TABLE"}  # importable, not in __all__


# ----- registering the families once transformers is there ----------------------------------------------------
class _FamilyRegistration(importlib.abc.MetaPathFinder):
    """Registers the families (imports ``vlmzoo.auto``) right after transformers has been imported, or, when a
    vlmzoo module's import brought transformers in, once that import has finished (registering in the middle of
    it would meet that module half-initialised)."""

    def __init__(self):
        self.lock = threading.RLock()
        self.vlmzoo_imports_running = 0
        self.registering = False
        self.done = False

    def find_spec(self, name, path, target=None):
        if self.done or not (name == "transformers" or name.startswith(f"{__name__}.")):
            return None
        for finder in sys.meta_path:  # the spec the rest of the import system would find
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        exec_module = loader.exec_module
        is_vlmzoo = name != "transformers"

        def exec_then_register(module):
            with self.lock:
                self.vlmzoo_imports_running += is_vlmzoo
            try:
                exec_module(module)
            finally:
                with self.lock:
                    self.vlmzoo_imports_running -= is_vlmzoo
            self.register_if_ready()

        loader.exec_module = exec_then_register  # this spec's own loader object: nothing else is changed
        return spec

    def register_if_ready(self) -> None:
        with self.lock:
            if self.done or self.registering or self.vlmzoo_imports_running or "transformers" not in sys.modules:
                return
            self.registering = True
        try:
            _check_transformers_version(sys.modules["transformers"].__version__)
            importlib.import_module(f"{__name__}.auto")  # registers every family of the table
            self.done = True
        finally:
            self.registering = False
        if self in sys.meta_path:
            sys.meta_path.remove(self)


def _installed_transformers_version() -> str | None:
    try:
        return importlib.metadata.version("transformers")
    except importlib.metadata.PackageNotFoundError:
        return None


if "transformers" not in sys.modules:  # refuse an unsupported transformers now, as an eager import would
    _installed = _installed_transformers_version()
    if _installed is not None:  # without package metadata, the check runs on transformers.__version__ at registration
        _check_transformers_version(_installed)

_REGISTRATION = _FamilyRegistration()
sys.meta_path.insert(0, _REGISTRATION)
_REGISTRATION.register_if_ready()  # transformers already imported: register now


# ----- the exported names, loaded on first use -----------------------------------------------------------------
def _exports() -> dict[str, object]:
    """Name -> object for everything ``vlmzoo`` exports (a class name two families share once)."""
    auto = importlib.import_module(f"{__name__}.auto")
    exports = {name: getattr(importlib.import_module(module), name) for name, module in _SHARED_EXPORTS.items()}
    family_classes: dict[str, type] = {}
    for family in auto.FAMILY_TABLE:
        for public_class in family.public_classes:
            if family_classes.setdefault(public_class.__name__, public_class) is not public_class:
                raise ImportError(f"two families export different classes named {public_class.__name__}")
    exports.update(family_classes)
    listed = [name for name in _SHARED_EXPORTS if name not in _UNLISTED] + list(family_classes)
    exports["__all__"] = listed
    return exports


def __getattr__(name: str):
    if name.startswith("__") and name != "__all__":  # tools probing dunders (__wrapped__, __path__) load nothing
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    exports = _exports()
    if name not in exports:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals().update(exports)
    return exports[name]


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_exports()))
