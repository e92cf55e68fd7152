"""Putting a conversion in place as a whole, so that a kill at any moment loses nothing (docs/design.md §6).

Owns :class:`StagingDirectory`, the hidden directory beside ``--output`` (same parent, so every move is a rename
on one file system) that receives the whole conversion, and the swap that puts it in place:

1. "staged": the staging directory is complete and verified. When ``--output`` exists, the entries the conversion
   does not write (a README, a user's notes) are hard-linked into it (copied where links are refused), all but
   the stale weight files an ``--overwrite`` drops; the mode of ``--output`` is copied; everything is flushed.
2. "journal written": ``.<name>.vlmzoo-swap.json`` beside ``--output`` records both trees (names, inode numbers).
3. "exchanged": one atomic exchange of the two directories (Linux ``renameat2(RENAME_EXCHANGE)``): ``--output``
   is the old tree, then the new one, never anything in between. Where the system has no such exchange, two
   renames: "old tree set aside", then "new tree in place"; between those two ``--output`` is missing and the
   journal says how to finish.
4. "old tree removed", then "journal removed".

A run that finds a journal (its predecessor was killed during steps 2-4) first finishes that swap, or rolls it back
when the new tree never reached ``--output`` (:func:`recover_interrupted_runs`). It also removes the staging
directories of killed runs: a live run holds an ``flock`` on its staging directory (and on its journal), which
the kernel releases however the process ends, so a directory whose lock can be taken belongs to a dead run.
A new ``--output`` is a single rename of the staging directory. A failing run removes its staging directory and
leaves ``--output`` exactly as it was.
"""

from __future__ import annotations

import errno
import functools
import glob
import json
import os
import secrets
import shutil
import stat
import sys
from collections.abc import Sequence
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: without locks, a leftover cannot be told from a live run's; leftovers are kept
    fcntl = None

from .errors import ConversionError, describe_os_error

# files that make a directory a checkpoint: without --overwrite, an --output holding one is refused up front
CHECKPOINT_FILE_PATTERNS = (
    "config.json", "*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin", "pytorch_model*.bin.index.json",
)  # fmt: skip
WEIGHT_FILE_PATTERNS = CHECKPOINT_FILE_PATTERNS[1:]
STAGING, OLD_TREE, JOURNAL = "staging", "old", "swap.json"
SWAP_STEPS = ("staged", "journal written", "exchanged", "old tree set aside", "new tree in place", "old tree removed",
              "journal removed")  # fmt: skip
_RENAME_EXCHANGE, _AT_FDCWD = 2, -100  # <linux/fs.h>, <fcntl.h>
_UNSUPPORTED = {errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP}


def after_swap_step(step: str) -> None:
    """Called after each step of :data:`SWAP_STEPS`; the tests end the process here to show every step is safe."""


def existing_entries(directory: Path, patterns: Sequence[str]) -> list[str]:
    return sorted({path.name for pattern in patterns for path in directory.glob(pattern)})


def swap_target(output: str | Path) -> Path:
    """The directory a conversion replaces: ``--output`` made absolute; through a symlink, its target (the link
    itself stays as it is and then points at the new tree)."""
    output = Path(output).absolute()
    return Path(os.path.realpath(output)) if output.is_symlink() else output


def hidden_prefix(target: Path) -> str:
    """What every hidden entry beside ``target`` that a conversion makes starts with."""
    return f".{target.name}.vlmzoo-"


def journal_path(target: Path) -> Path:
    return target.parent / f"{hidden_prefix(target)}{JOURNAL}"


def nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


# ----- file-system primitives -----------------------------------------------------------------------------
@functools.cache
def _renameat2():
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # a C library older than glibc 2.28
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


def exchange_directories(first: Path, second: Path) -> bool:
    """Swap two directories in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False where the system or
    the file system cannot (the caller then uses two renames). Any other failure is an ``OSError``."""
    function = _renameat2()
    if function is None:
        return False
    import ctypes

    if function(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in _UNSUPPORTED:
        return False
    raise OSError(code, os.strerror(code), str(second))


def _flock(descriptor: int) -> bool:
    """Take an exclusive ``flock`` on ``descriptor`` (the kernel releases it when the process ends, however it
    ends); False when another process holds it. Without ``fcntl``: True, and nothing is locked."""
    if fcntl is None:
        return True
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _try_lock(path: Path) -> int | None:
    """An open descriptor of ``path`` holding its lock, or None when another process holds the lock."""
    descriptor = os.open(path, os.O_RDONLY)
    if _flock(descriptor):
        return descriptor
    os.close(descriptor)
    return None


def _close(descriptor: int | None) -> None:
    if descriptor is not None:
        os.close(descriptor)


def _sync(path: str | Path) -> None:
    """Flush a regular file or a directory to disk (file systems that cannot sync a directory are let be)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    except OSError as error:
        if error.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise
    finally:
        os.close(descriptor)


def _sync_tree(directory: Path) -> None:
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            if stat.S_ISREG(os.lstat(path).st_mode):
                _sync(path)
        _sync(root)


def _link_or_copy(source: str, target: str) -> str:
    try:
        os.link(source, target, follow_symlinks=False)
    except OSError:  # another file system below, no hard links there, or a protected link
        shutil.copy2(source, target, follow_symlinks=False)
    return target


def _keep(source: Path, target: Path) -> None:
    """Carry an entry of the old ``--output`` into the new tree without changing the old one."""
    if source.is_symlink():
        os.symlink(os.readlink(source), target)
    elif source.is_dir():
        shutil.copytree(source, target, symlinks=True, copy_function=_link_or_copy)
    else:
        _link_or_copy(str(source), str(target))


def _write_journal(journal: Path, record: dict) -> int:
    """Write ``record`` as ``journal``, locked before it is visible; returns the descriptor holding the lock.
    ``FileExistsError`` when a journal exists (one swap at a time)."""
    data = json.dumps(record).encode()
    temporary = journal.with_name(f"{journal.name}.{secrets.token_hex(4)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        _flock(descriptor)
        os.write(descriptor, data)
        os.fsync(descriptor)
        try:
            os.link(temporary, journal)  # atomic and exclusive: the journal appears complete and already locked
        except FileExistsError:
            raise
        except OSError:  # no hard links on this file system: an exclusive create, locked at once
            os.close(descriptor)
            descriptor = -1
            descriptor = os.open(journal, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            _flock(descriptor)
            os.write(descriptor, data)
            os.fsync(descriptor)
    except BaseException:
        if descriptor >= 0:
            os.close(descriptor)
        raise
    finally:
        temporary.unlink(missing_ok=True)
    _sync(journal.parent)
    return descriptor


def _remove(path: Path) -> None:
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


# ----- the staging directory and the swap -----------------------------------------------------------------
class StagingDirectory:
    """A hidden directory beside ``--output`` that receives the conversion, then replaces ``--output`` as a whole.

    Use as a context manager: leaving it with an exception (or without :meth:`commit`) deletes the staging
    directory, so a failed conversion leaves nothing behind.
    """

    def __init__(self, output: str | Path, overwrite: bool):
        self.requested = Path(output)
        self.output = swap_target(output)
        self.overwrite = overwrite
        # the same parent when it exists (a rename, never a copy); else its nearest existing ancestor
        self.parent = nearest_existing(self.output.parent)
        self.path = self._make_hidden_dir(STAGING)
        self._lock = _try_lock(self.path)  # held while this run lives: the directory is not a leftover
        self.committed = False

    def _make_hidden_dir(self, kind: str) -> Path:
        while True:
            path = self.parent / f"{hidden_prefix(self.output)}{kind}-{secrets.token_hex(4)}"
            try:
                os.mkdir(path)  # honours the umask, so a committed new --output gets the usual permissions
                return path
            except FileExistsError:
                continue
            except OSError as error:
                raise ConversionError(
                    f"cannot write beside --output '{self.requested}' (in '{self.parent}'): {describe_os_error(error)}"
                ) from None

    def __enter__(self) -> StagingDirectory:
        return self

    def __exit__(self, *exc_info) -> None:
        if not self.committed:
            self.discard()

    def discard(self) -> None:
        _close(self._lock)
        self._lock = None
        shutil.rmtree(self.path, ignore_errors=True)

    def write_error(self, error: OSError, doing: str = "writing the conversion") -> ConversionError:
        """The one-line user error for an ``OSError`` met while staging or swapping (``--output`` is unchanged)."""
        where = f" ({Path(error.filename).name})" if getattr(error, "filename", None) else ""
        return ConversionError(
            f"cannot write --output '{self.requested}': {describe_os_error(error)} while {doing}{where}; "
            f"--output is unchanged"
        )

    def replaced_files(self, names: Sequence[str]) -> list[str]:
        """Which of ``names`` already exist in ``--output``; refused (``ConversionError``) without ``--overwrite``."""
        output = self.output
        if not output.exists():
            return []
        replaced = sorted(name for name in set(names) if (output / name).exists() or (output / name).is_symlink())
        if replaced and not self.overwrite:
            raise ConversionError(
                f"--output '{self.requested}' already holds {replaced}; pass --overwrite to replace them "
                f"(nothing was changed)"
            )
        return replaced

    def commit(self) -> list[str]:
        """Put the staged tree in place of ``--output``; returns the names of the files replaced (``--overwrite``)."""
        output = self.output
        if not (output.exists() or output.is_symlink()):
            try:
                _sync_tree(self.path)
                output.parent.mkdir(parents=True, exist_ok=True)
                os.rename(self.path, output)  # one rename: --output is absent, then complete
                _sync(output.parent)
            except OSError as error:
                raise self.write_error(error, "moving the conversion into place") from None
            self._done()
            return []
        staged = [path.name for path in self.path.iterdir()]
        replaced = self.replaced_files(staged)
        stale = [name for name in existing_entries(output, WEIGHT_FILE_PATTERNS) if name not in staged]
        stale = stale if self.overwrite else []
        try:
            for name in sorted(set(os.listdir(output)) - set(staged) - set(stale)):
                _keep(output / name, self.path / name)
            shutil.copymode(output, self.path)
            _sync_tree(self.path)
        except OSError as error:
            raise self.write_error(error, "carrying the other files of --output over") from None
        after_swap_step("staged")
        self._swap()
        self._done()
        return replaced + stale

    def _done(self) -> None:
        _close(self._lock)
        self._lock = None
        self.committed = True

    def _swap(self) -> None:
        output, staging = self.output, self.path
        journal = journal_path(output)
        old_name = f"{hidden_prefix(output)}{OLD_TREE}-{secrets.token_hex(4)}"
        record = {"output": output.name, "staging": staging.name, "old": old_name,
                  "new_inode": os.lstat(staging).st_ino, "old_inode": os.lstat(output).st_ino}  # fmt: skip
        try:
            journal_lock = _write_journal(journal, record)
        except FileExistsError:
            raise ConversionError(
                f"another conversion is replacing --output '{self.requested}' right now ('{journal}' exists); "
                f"run again once it has finished (nothing was changed)"
            ) from None
        except OSError as error:
            raise self.write_error(error, "recording the swap") from None
        after_swap_step("journal written")
        try:
            if exchange_directories(staging, output):
                old = staging  # the staging name now holds the old tree
                after_swap_step("exchanged")
            else:
                old = output.parent / old_name
                os.rename(output, old)
                after_swap_step("old tree set aside")
                try:
                    os.rename(staging, output)
                except OSError:
                    os.rename(old, output)
                    raise
                after_swap_step("new tree in place")
        except OSError as error:  # nothing moved, or it was moved back: --output is as it was
            _close(journal_lock)
            journal.unlink(missing_ok=True)
            raise self.write_error(error, "replacing it") from None
        try:
            _sync(output.parent)
        except OSError:
            pass  # the swap is done; flushing the parent only makes it durable sooner
        shutil.rmtree(old, ignore_errors=True)
        after_swap_step("old tree removed")
        if not old.exists():  # else the journal stays, and the next run removes what is left
            journal.unlink(missing_ok=True)
            after_swap_step("journal removed")
        _close(journal_lock)


# ----- recovering from a killed run -----------------------------------------------------------------------
def recover_interrupted_runs(output: str | Path) -> list[str]:
    """Finish, or roll back, a swap into ``--output`` that a killed run left half-done, and remove the staging
    directories of killed runs; returns a note for each thing done. Called before a conversion looks at
    ``--output``; ``ConversionError`` when another run is swapping it right now."""
    requested, target = Path(output), swap_target(output)
    if not target.parent.is_dir():
        return []
    notes = []
    journal = journal_path(target)
    if journal.exists():
        notes.append(_recover_swap(journal, target, requested))
    if fcntl is None:
        return notes
    prefix = hidden_prefix(target)
    for leftover in sorted(target.parent.glob(glob.escape(prefix) + "*")):
        is_staging = leftover.name.startswith(f"{prefix}{STAGING}-") and leftover.is_dir()
        is_journal_draft = leftover.name.startswith(f"{prefix}{JOURNAL}.") and leftover.name.endswith(".tmp")
        if not (is_staging or is_journal_draft) or leftover.is_symlink():
            continue
        try:
            lock = _try_lock(leftover)
        except OSError:
            continue
        if lock is None:
            continue  # a live run's
        _remove(leftover)
        _close(lock)
        if is_staging:
            notes.append(f"removed '{leftover}', the staging directory of a conversion that was interrupted")
    return notes


def _recover_swap(journal: Path, target: Path, requested: Path) -> str:
    lock = _try_lock(journal)
    if lock is None:
        raise ConversionError(
            f"another conversion is replacing --output '{requested}' right now ('{journal}' is in use); run again "
            f"once it has finished (nothing was changed)"
        )
    prefix = hidden_prefix(target)
    try:
        record = json.loads(journal.read_text(encoding="utf-8"))
        names = [record["staging"], record["old"]]
        inodes = {"new": int(record["new_inode"]), "old": int(record["old_inode"])}
        if record["output"] != target.name or not all(
            isinstance(name, str) and name.startswith(prefix) and os.sep not in name for name in names
        ):
            raise ValueError("the journal names other directories")
    except (OSError, ValueError, KeyError, TypeError):
        _close(lock)
        raise ConversionError(
            f"'{journal}' records an interrupted replacement of --output '{requested}' but cannot be read; check "
            f"'{target}' and the {prefix}* entries beside it, then delete the journal"
        ) from None
    present = {path: os.lstat(path).st_ino for path in [target, *(target.parent / name for name in names)]
               if path.is_dir() and not path.is_symlink()}  # fmt: skip
    new, old = ([path for path, inode in present.items() if inode == inodes[kind]] for kind in ("new", "old"))
    what = f"an interrupted --overwrite of --output '{requested}'"
    try:
        if new == [target] or (target not in present and new):
            if target not in present:
                os.rename(new[0], target)
            note = f"finished {what}: it holds the new conversion"
            for path in old:
                shutil.rmtree(path, ignore_errors=True)
        elif old == [target] or (target not in present and old):
            if target not in present:
                os.rename(old[0], target)
            note = f"rolled back {what}: it holds the earlier conversion, as before that run"
            for path in new:
                shutil.rmtree(path, ignore_errors=True)
        elif target in present:
            raise ConversionError(
                f"'{journal}' records an interrupted replacement of --output '{requested}', which has been replaced "
                f"since; check the {prefix}* entries beside it, then delete the journal"
            )
        else:
            note = f"{what} left neither tree behind; nothing to finish"
    except OSError as error:
        _close(lock)
        raise ConversionError(f"cannot finish {what}: {describe_os_error(error)}") from None
    except ConversionError:
        _close(lock)
        raise
    journal.unlink(missing_ok=True)
    _close(lock)
    return note


__all__ = [
    "CHECKPOINT_FILE_PATTERNS",
    "SWAP_STEPS",
    "StagingDirectory",
    "after_swap_step",
    "exchange_directories",
    "journal_path",
    "recover_interrupted_runs",
    "swap_target",
]
