"""The one exception a conversion raises for a user's mistake (docs/design.md §6), and how it is printed.

``ConversionError`` means "the input, the output or the arguments cannot work": a missing, unreadable or
corrupt file, a config the converter does not support, an output it must not replace. The entry points
(``python -m vlmzoo.conversion_scripts.convert_<family>`` and ``vlmzoo convert``) print it as one line and
exit 2; every other exception is a bug and keeps its traceback. This module imports nothing heavy, so the
console script can catch the class without loading torch.
"""

from __future__ import annotations

import errno
import os
import re
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
              errno.EROFS: "read-only file system", errno.ENOSPC: "no space left on device",
              errno.EDQUOT: "disk quota exceeded (no space left for this user)", errno.EFBIG: "file too large",
              errno.EBUSY: "device or resource busy", errno.EXDEV: "on another file system"}  # fmt: skip
    return causes.get(error.errno) or (error.strerror or type(error).__name__).lower()


# how Rust extensions (safetensors, tokenizers) report an I/O error: "... I/O error: ... (os error 28)"
_RUST_IO_ERROR = re.compile(r"\(os error (\d+)\)")


def as_os_error(error: BaseException) -> OSError | None:
    """The ``OSError`` behind ``error``: itself, or the one a Rust extension wrapped in its own exception
    (safetensors raises ``SafetensorError("... (os error 28)")`` for a full disk); None for any other error."""
    if isinstance(error, OSError):
        return error
    match = _RUST_IO_ERROR.search(str(error))
    if match is None:
        return None
    code = int(match[1])
    return OSError(code, os.strerror(code))


def os_error(action: str, path: str | Path, error: OSError) -> ConversionError:
    """``ConversionError('cannot <action> <path>: <cause>')`` for an ``OSError`` met on ``path``."""
    return ConversionError(f"cannot {action} '{path}': {describe_os_error(error)}")


__all__ = [
    "ConversionError",
    "USER_ERROR_EXIT_CODE",
    "as_os_error",
    "describe_os_error",
    "one_line",
    "os_error",
    "report_user_error",
]
