"""The ``vlmzoo`` console script: ``vlmzoo demo …`` and ``vlmzoo convert <family> …``.

Each sub-command parses its own arguments with ``HfArgumentParser`` in its module; this file only dispatches.
"""

from __future__ import annotations

import importlib
import sys

from .registry import Registry

COMMANDS: Registry = Registry("command")
COMMANDS.register("demo")(lambda argv: importlib.import_module("vlmzoo.demo").main(argv))


@COMMANDS.register("convert")
def _convert(argv: list[str]) -> int:
    if not argv or argv[0].startswith("-"):
        raise SystemExit("usage: vlmzoo convert <family> --source {hf,original} --input DIR --output DIR")
    from .auto import get_family

    family = get_family(argv[0]).key
    return importlib.import_module(f"vlmzoo.conversion_scripts.convert_{family}").main(argv[1:])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: vlmzoo {{{','.join(COMMANDS.keys())}}} [args]")
        return 0
    try:
        result = COMMANDS.get(argv[0])(argv[1:])
    except (ValueError, TypeError) as error:  # bad input: say what is wrong, without a traceback
        print(f"vlmzoo: error: {error}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
