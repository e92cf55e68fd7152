"""The one exception a conversion raises for a user's mistake (docs/design.md §6), and how it is printed.

``ConversionError`` means "the input, the output or the arguments cannot work": a missing, unreadable or
corrupt file, a config the converter does not support, an output it must not replace. The entry points
(``python -m vlmzoo.conversion_scripts.convert_<family>`` and ``vlmzoo convert``) print it as one line and
exit 2; every other exception is a bug and keeps its traceback. This module imports nothing heavy, so the
console script can catch the class without loading torch.
"""

from __future__ import annotations

import errno
import sys
from pathlib import Path

USER_ERROR_EXIT_CODE = 2


class ConversionError(ValueError):
    """A user error in a conversion: the message names the file or argument and the cause, on one line."""


def one_line(message: object) -> str:
    """``message`` with its lines joined, so an error always prints as a single line."""
    return " ".join(part.strip() for part in str(message).splitlines() if part.strip())


def report_user_error(prog: str, error: BaseException) -> int:
    """Print ``prog: error: <message>`` to stderr and return the user-error exit code."""
    print(f"{prog}: error: {one_line(error)}", file=sys.stderr)
    return USER_ERROR_EXIT_CODE


def describe_os_error(error: OSError) -> str:
    """The cause of an ``OSError`` in a few words: 'permission denied', 'no such file or directory', ..."""
    causes = {errno.EACCES: "permission denied", errno.EPERM: "permission denied", errno.ENOENT: "no such file",
              errno.EISDIR: "is a directory", errno.ENOTDIR: "a parent is not a directory",
              errno.EROFS: "read-only file system", errno.ENOSPC: "no space left on device"}  # fmt: skip
    return causes.get(error.errno) or (error.strerror or type(error).__name__).lower()


def os_error(action: str, path: str | Path, error: OSError) -> ConversionError:
    """``ConversionError('cannot <action> <path>: <cause>')`` for an ``OSError`` met on ``path``."""
    return ConversionError(f"cannot {action} '{path}': {describe_os_error(error)}")


__all__ = ["ConversionError", "USER_ERROR_EXIT_CODE", "describe_os_error", "one_line", "os_error", "report_user_error"]
