"""Conversion scripts: official and transformers-reference checkpoints -> vlmzoo checkpoints (DESIGN.md §6).

``common`` holds the machinery every family shares (argument parsing, sharded ``.safetensors`` / ``.bin``
reading, regex key tables, the accounting of every tensor, streaming sharded output); each
``convert_<family>.py`` holds only that family's key table, config mapping and processor mapping.
Run one as ``python -m vlmzoo.conversion_scripts.convert_<family> …`` or ``vlmzoo convert <family> …``.
"""
