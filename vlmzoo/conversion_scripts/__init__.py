"""Conversion scripts: official and transformers-reference checkpoints -> vlmzoo checkpoints (docs/design.md §6).

Shared machinery, re-exported by ``common``:

- ``common``: the arguments (``--source`` from the family's source registry, repeatable ``--encoder NAME=DIR``),
  :class:`~.common.Converter` (source registry and ``main``), the run (plan, account, check shapes, stage, swap);
- ``checkpoints``: reading sharded ``.safetensors`` / ``.bin`` directories, configs, tokenizers, with errors that
  name the file and the cause;
- ``key_tables``: rename / split (one-to-many) / merge (many-to-one) rules and the plan that accounts for every
  tensor and checks every shape before anything is written;
- ``writing``: the checks of ``--output`` (and its free space) and the streaming writer sharded by
  ``huggingface_hub``;
- ``swap``: the staging directory beside ``--output`` and the swap that replaces ``--output`` as a whole, safe
  against a kill at any moment (a half-done swap is finished by the next run);
- ``errors``: :class:`~.errors.ConversionError`, the user error both entry points print as one line (exit 2);
- ``llava_fork``: what the LLaVA code base and its forks (LLaVA-HR, Mini-Gemini, EAGLE) share.

Each ``convert_<family>.py`` holds only that family's key table, config translation and processor. Run one as
``python -m vlmzoo.conversion_scripts.convert_<family> …`` or ``vlmzoo convert <family> …``.
"""
