"""The ``vlmzoo`` console script: ``vlmzoo demo …`` and ``vlmzoo convert <family> …``.

Each sub-command parses its own arguments with ``HfArgumentParser`` in its module; this file only dispatches.
User errors (an unknown command or family, bad arguments, a :class:`ConversionError`) print one line
``vlmzoo: error: …`` and exit 2; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import importlib
import sys

from .conversion_scripts.errors import ConversionError, report_user_error
from .registry import Registry

CONVERT_USAGE = "usage: vlmzoo convert <family> --source SOURCE --input DIR --output DIR [--help]"


class CommandLineError(ValueError):
    """A mistake on the command line (unknown command or family, invalid arguments): exit 2, no traceback."""


COMMANDS: Registry = Registry("command")


@COMMANDS.register("demo")
def _demo(argv: list[str]) -> int:
    demo = importlib.import_module("vlmzoo.demo")
    try:
        demo.parse_args(argv)  # the demo validates its arguments while parsing (ValueError): a user error here
    except ValueError as error:
        raise CommandLineError(str(error)) from None
    return demo.main(argv)


@COMMANDS.register("convert")
def _convert(argv: list[str]) -> int:
    from .auto import FAMILIES, get_family

    if argv and argv[0] in ("-h", "--help"):
        print(f"{CONVERT_USAGE}\nfamilies: {', '.join(FAMILIES.keys())}; see vlmzoo convert <family> --help")
        return 0
    if not argv or argv[0].startswith("-"):
        raise CommandLineError(f"name the family to convert ({CONVERT_USAGE})")
    try:
        family = get_family(argv[0]).key
    except ValueError as error:
        raise CommandLineError(str(error)) from None
    module_name = f"vlmzoo.conversion_scripts.convert_{family}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name != module_name:
            raise
        raise CommandLineError(f"family '{family}' has no converter yet") from None
    return module.main(argv[1:])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: vlmzoo {{{','.join(COMMANDS.keys())}}} [args]")
        return 0
    try:
        try:
            command = COMMANDS.get(argv[0])
        except ValueError as error:
            raise CommandLineError(str(error)) from None
        result = command(argv[1:])
    except (CommandLineError, ConversionError) as error:  # user errors only: bugs keep their traceback
        return report_user_error("vlmzoo", error)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
