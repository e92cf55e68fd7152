"""The ``vlmzoo`` console script: ``vlmzoo demo …`` and ``vlmzoo convert <family> …``.

Each sub-command parses its own arguments with ``HfArgumentParser`` in its module (whose usage line names it:
``usage: vlmzoo demo …``, ``usage: vlmzoo convert llava …``); this file only dispatches, and imports nothing heavy
before a command runs, so ``vlmzoo --help`` and ``vlmzoo convert --help`` answer without loading torch (the
families with a converter are the ``conversion_scripts/convert_<family>.py`` modules, found by name).
User errors (an unknown command, family or flag, bad arguments, a :class:`ConversionError`) print one line
``<prog>: error: …`` and exit 2; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .conversion_scripts.errors import ConversionError, report_user_error
from .registry import Registry

PROG = "vlmzoo"
CONVERTER_PREFIX = "convert_"
CONVERT_USAGE = "usage: vlmzoo convert <family> --source SOURCE --input DIR --output DIR [--help]"


class CommandLineError(ValueError):
    """A mistake on the command line (unknown command or family, invalid arguments): exit 2, no traceback."""

    def __init__(self, message: str, prog: str = PROG):
        super().__init__(message)
        self.prog = prog


@dataclass(frozen=True)
class Command:
    """A sub-command: what runs it (with the arguments after its name) and its line in ``vlmzoo --help``."""

    run: Callable[[list[str]], int]
    summary: str


COMMANDS: Registry[Command] = Registry("command")


def command(name: str, summary: str):
    """Decorator registering ``run(argv) -> exit code`` as ``vlmzoo <name>``."""

    def decorator(run):
        COMMANDS.register(name)(Command(run, summary))
        return run

    return decorator


# ----- argument errors, shared by the sub-commands' parsers ----------------------------------------------------
_UNRECOGNIZED = re.compile(r"^unrecognized arguments: (?P<flags>.+)$")


def with_suggestions(message: str, option_strings: Sequence[str]) -> str:
    """argparse's ``unrecognized arguments: --ouptut`` with the closest valid flag named, when one is close."""
    match = _UNRECOGNIZED.match(message)
    if match is None:
        return message
    hints = []
    for flag in match["flags"].split():
        close = difflib.get_close_matches(flag.split("=", 1)[0], option_strings, n=1, cutoff=0.75)
        if flag.startswith("-") and close:
            hints.append(f"{flag}: did you mean {close[0]}?")
    return f"{message} ({'; '.join(hints)})" if hints else message


def raise_parser_errors(parser, prog: str, error_class: type[Exception]) -> None:
    """Make ``parser`` raise ``error_class('<message> (see <prog> --help)')`` instead of printing its usage and
    exiting: the caller prints one line (``<prog>: error: …``) and returns 2."""
    options = [option for action in parser._actions for option in action.option_strings if option.startswith("--")]

    def error(message: str):
        raise error_class(f"{with_suggestions(message, options)} (see {prog} --help)")

    parser.error = error


# ----- the commands --------------------------------------------------------------------------------------------
def converter_families() -> list[str]:
    """The families with a converter: the ``convert_<family>`` modules of ``vlmzoo.conversion_scripts``."""
    from . import conversion_scripts

    names = (info.name for info in pkgutil.iter_modules(conversion_scripts.__path__))
    return sorted(name[len(CONVERTER_PREFIX) :] for name in names if name.startswith(CONVERTER_PREFIX))


@command("convert", "convert a checkpoint (transformers' or the original repository's layout) into a vlmzoo one")
def _convert(argv: list[str]) -> int:
    families = converter_families()
    if argv and argv[0] in ("-h", "--help"):
        print(f"{CONVERT_USAGE}\nfamilies: {', '.join(families)}; see vlmzoo convert <family> --help")
        return 0
    if not argv or argv[0].startswith("-"):
        raise CommandLineError(f"name the family to convert ({CONVERT_USAGE})")
    if argv[0] not in families:
        from .auto import get_family  # the family table says whether the family exists at all

        try:
            family = get_family(argv[0]).key
        except ValueError as error:
            raise CommandLineError(str(error)) from None
        raise CommandLineError(f"family '{family}' has no converter yet (families with one: {', '.join(families)})")
    module = importlib.import_module(f"vlmzoo.conversion_scripts.{CONVERTER_PREFIX}{argv[0]}")
    return module.main(argv[1:])


@command("demo", "train a tiny model on synthetic visual questions on a CPU in minutes, then save and reload it")
def _demo(argv: list[str]) -> int:
    demo = importlib.import_module("vlmzoo.demo")
    try:
        args = demo.parse_args(argv)  # every argument is checked here (ValueError), before any training
    except ValueError as error:
        raise CommandLineError(str(error), prog=demo.PROG) from None
    return demo.run_parsed(args)


def usage() -> str:
    """``vlmzoo --help``: the commands, a line each."""
    width = max(len(name) for name in COMMANDS.keys())
    lines = [f"usage: {PROG} <command> [args]", "", "commands:"]
    lines += [f"  {name:<{width}}  {COMMANDS.get(name).summary}" for name in COMMANDS.keys()]
    lines += ["", f"'{PROG} <command> --help' lists the arguments of a command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    try:
        try:
            command = COMMANDS.get(argv[0])
        except ValueError as error:
            raise CommandLineError(f"{error} (see {PROG} --help)") from None
        result = command.run(argv[1:])
    except CommandLineError as error:  # user errors only: bugs keep their traceback
        return report_user_error(error.prog, error)
    except ConversionError as error:
        return report_user_error(PROG, error)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
