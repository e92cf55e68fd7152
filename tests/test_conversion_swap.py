"""A conversion never loses data, even when it is killed (docs/design.md §6; vlmzoo/conversion_scripts/swap.py).

The toy family of ``test_conversion_common`` converts into an ``--output`` that already holds an earlier, different
conversion (sharded, so the new single-file one also drops stale shards) plus a user's README, a folder of notes
and a link. A forked child runs the conversion and ends itself with ``os._exit`` (no cleanup, no ``finally``: what
a SIGKILL leaves) right after one step of the swap; for every step, with the atomic exchange and with the two-rename
fallback, ``--output`` is then exactly the old tree or exactly the new one (the fallback alone may leave it missing
between its two renames), and the next run puts it right: it holds the new tree and nothing is left beside it.
Disk-full and other write failures are one line naming ``--output``, which stays as it was.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import resource
import shutil
import signal
import time
from pathlib import Path

import pytest
from safetensors import SafetensorError

from vlmzoo.conversion_scripts import swap, writing
from vlmzoo.conversion_scripts.common import ConversionError
from vlmzoo.conversion_scripts.swap import SWAP_STEPS, StagingDirectory, recover_interrupted_runs

from test_conversion_common import TOY, toy_source_state, write_sharded

KILLED = 77  # the child's exit code when it ended itself at the chosen step
EXCHANGE_STEPS = ["staged", "journal written", "exchanged", "old tree removed", "journal removed"]
FALLBACK_STEPS = ["staged", "journal written", "old tree set aside", "new tree in place", "old tree removed",
                  "journal removed"]  # fmt: skip


def tree(directory: Path) -> dict[str, str] | None:
    """Every entry under ``directory``: files by content hash, links by target, folders as such (None: absent)."""
    if not directory.exists():
        return None
    entries = {}
    for path in sorted(directory.rglob("*")):
        name = str(path.relative_to(directory))
        if path.is_symlink():
            entries[name] = f"-> {os.readlink(path)}"
        elif path.is_dir():
            entries[name] = "dir"
        else:
            entries[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return entries


def hidden_beside(output: Path) -> list[str]:
    return sorted(path.name for path in output.parent.iterdir() if path.name.startswith("."))


def add_user_files(output: Path) -> None:
    (output / "README.md").write_text("my notes on this model")
    (output / "notes").mkdir()
    (output / "notes" / "eval.txt").write_text("accuracy 0.5")
    (output / "latest").symlink_to("README.md")


@pytest.fixture
def scene(tmp_path, capsys):
    """(argv of the new conversion, its --output holding the old tree, the old tree, the new tree)."""
    old_state, new_state = toy_source_state(seed=0), toy_source_state(seed=1)
    old_input = write_sharded(tmp_path / "old_input", old_state, [list(old_state)])
    new_input = write_sharded(tmp_path / "new_input", new_state, [list(new_state)])
    output = tmp_path / "outs" / "out"
    common = ["--source", "flat", "--allow-unused", "o_proj"]
    assert TOY.main([*common, "--input", str(old_input), "--output", str(output), "--max-shard-size", "300"]) == 0
    assert len(list(output.glob("model-*.safetensors"))) > 1
    add_user_files(output)
    reference = tmp_path / "reference" / "out"  # what the new run must leave: its conversion plus the user's files
    assert TOY.main([*common, "--input", str(new_input), "--output", str(reference)]) == 0
    add_user_files(reference)
    capsys.readouterr()
    argv = [*common, "--input", str(new_input), "--output", str(output), "--overwrite"]
    old, new = tree(output), tree(reference)
    assert old != new and old["README.md"] == new["README.md"]
    return argv, output, old, new


def run_in_child(argv: list[str], kill_after: str | None = None, exchange: bool = True, file_size_limit: int = 0,
                 stderr: Path | None = None) -> int:
    """Run the toy conversion in a forked child; it ends itself with ``os._exit`` right after step ``kill_after``
    of the swap (``exchange=False``: the system has no atomic exchange). Returns the child's exit code."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 99
        try:
            if not exchange:
                swap.exchange_directories = lambda first, second: False

            def after_step(step: str) -> None:
                if step == kill_after:
                    os._exit(KILLED)

            swap.after_swap_step = after_step
            if file_size_limit:  # writes past the limit fail with EFBIG, as a full disk fails with ENOSPC
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            with open(os.devnull, "w") as sink, open(stderr or os.devnull, "w") as err:
                with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(err):
                    if file_size_limit:
                        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))
                    code = TOY.main(argv)
                    err.flush()
        finally:
            os._exit(code)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        finished, status = os.waitpid(pid, os.WNOHANG)
        if finished:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError("the converting child did not finish")


def test_the_steps_are_the_ones_the_swap_reports():
    assert set(EXCHANGE_STEPS) | set(FALLBACK_STEPS) == set(SWAP_STEPS)


@pytest.mark.parametrize(
    "exchange, step",
    [(True, step) for step in EXCHANGE_STEPS] + [(False, step) for step in FALLBACK_STEPS],
    ids=[f"exchange-{s}" for s in EXCHANGE_STEPS] + [f"two-renames-{s}" for s in FALLBACK_STEPS],
)
def test_a_kill_at_any_step_leaves_the_old_or_the_new_tree_and_the_next_run_recovers(scene, capsys, exchange, step):
    argv, output, old, new = scene
    assert run_in_child(argv, kill_after=step, exchange=exchange) == KILLED  # the step was reached
    after_kill = tree(output)
    before_the_new_tree_is_in = SWAP_STEPS.index(step) < SWAP_STEPS.index("exchanged")
    if step == "old tree set aside":  # the one moment the fallback has no --output; the journal says what to do
        assert after_kill is None and swap.journal_path(output).exists()
    else:
        assert after_kill == (old if before_the_new_tree_is_in else new)

    code = TOY.main(argv)  # the next run first finishes (or rolls back) what the killed one left
    out = capsys.readouterr().out
    assert code == 0
    assert tree(output) == new
    assert hidden_beside(output) == []  # no staging directory, old tree or journal left
    if step in ("journal written",):
        assert "note: rolled back an interrupted --overwrite" in out
    elif step not in ("staged", "journal removed"):
        assert "note: finished an interrupted --overwrite" in out
    if step == "staged":
        assert "the staging directory of a conversion that was interrupted" in out


def test_recovery_happens_at_the_start_even_of_a_run_that_then_fails(scene, capsys, tmp_path):
    argv, output, old, new = scene
    assert run_in_child(argv, kill_after="old tree set aside", exchange=False) == KILLED
    assert tree(output) is None
    without_overwrite = ["--source", "flat", "--input", str(tmp_path / "old_input"), "--output", str(output)]
    assert TOY.main(without_overwrite) == 2  # refused: --output holds a conversion again...
    captured = capsys.readouterr()
    assert "note: finished an interrupted --overwrite" in captured.out and "pass --overwrite" in captured.err
    assert tree(output) == new and hidden_beside(output) == []  # ...the complete new one


def test_recovery_alone_restores_a_complete_tree(scene):
    argv, output, old, new = scene
    assert run_in_child(argv, kill_after="journal written", exchange=False) == KILLED
    notes = recover_interrupted_runs(output)
    assert len(notes) == 1 and notes[0].startswith(f"rolled back an interrupted --overwrite of --output '{output}'")
    assert tree(output) == old and hidden_beside(output) == []


def test_a_real_write_failure_inside_safetensors_is_one_line_and_changes_nothing(scene, tmp_path):
    argv, output, old, _ = scene
    sizes = {path.name: path.stat().st_size for path in (tmp_path / "reference" / "out").iterdir()}
    limit = 1000
    assert sizes["config.json"] < limit < sizes["model.safetensors"]  # the config fits, the weights do not
    assert run_in_child(argv, file_size_limit=limit, stderr=tmp_path / "err.txt") == 2
    lines = [line for line in (tmp_path / "err.txt").read_text().splitlines() if line.strip()]
    assert lines == [f"vlmzoo convert toy: error: cannot write --output '{output}': file too large while writing the "
                     f"conversion (model.safetensors); --output is unchanged"]  # fmt: skip
    assert tree(output) == old and hidden_beside(output) == []


@pytest.mark.parametrize(
    "failure",
    [OSError(errno.ENOSPC, "No space left on device"),
     SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")],
    ids=["OSError", "as safetensors reports it"],
)  # fmt: skip
def test_disk_full_while_writing_the_weights_is_one_line_naming_the_output(scene, capsys, monkeypatch, failure):
    argv, output, old, _ = scene

    def full_disk(*args, **kwargs):
        raise failure

    monkeypatch.setattr(writing, "save_file", full_disk)
    assert TOY.main(argv) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines == [f"vlmzoo convert toy: error: cannot write --output '{output}': no space left on device while "
                     f"writing the conversion (model.safetensors); --output is unchanged"]  # fmt: skip
    assert tree(output) == old and hidden_beside(output) == []


def test_disk_full_while_writing_the_config_or_the_journal(scene, capsys, monkeypatch):
    argv, output, old, _ = scene
    from transformers import PreTrainedConfig

    def full_disk(self, directory, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(Path(directory) / "config.json"))

    with monkeypatch.context() as patch:
        patch.setattr(PreTrainedConfig, "save_pretrained", full_disk)
        assert TOY.main(argv) == 2
    err = capsys.readouterr().err
    assert f"--output '{output}': no space left on device while writing the conversion (config.json)" in err
    assert tree(output) == old and hidden_beside(output) == []

    def no_journal(journal, record):
        raise OSError(errno.ENOSPC, "No space left on device", str(journal))

    monkeypatch.setattr(swap, "_write_journal", no_journal)
    assert TOY.main(argv) == 2
    assert "no space left on device while recording the swap" in capsys.readouterr().err
    assert tree(output) == old and hidden_beside(output) == []


def test_too_little_free_space_is_refused_before_anything_is_written(scene, capsys, monkeypatch, tmp_path):
    argv, output, old, new = scene
    weights = (tmp_path / "reference" / "out" / "model.safetensors").read_bytes()
    needed = len(weights) - 8 - int.from_bytes(weights[:8], "little")  # the data section: the tensors' bytes
    for free in (needed - 1, needed):
        monkeypatch.setattr(writing.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**12, 0, free))
        code = TOY.main(argv)
        err = capsys.readouterr().err
        if free < needed:
            assert code == 2 and f"no space left for --output '{output}': the converted tensors need" in err
            assert tree(output) == old and hidden_beside(output) == []
        else:
            assert code == 0 and tree(output) == new


def test_a_failed_second_rename_puts_the_old_tree_back(scene, capsys, monkeypatch):
    argv, output, old, _ = scene
    monkeypatch.setattr(swap, "exchange_directories", lambda first, second: False)
    real_rename = os.rename

    def rename(source, target):
        if Path(source).name.startswith(".out.vlmzoo-staging-"):
            raise OSError(errno.EIO, "Input/output error")
        return real_rename(source, target)

    monkeypatch.setattr(swap.os, "rename", rename)
    assert TOY.main(argv) == 2
    assert f"cannot write --output '{output}': input/output error while replacing it" in capsys.readouterr().err
    assert tree(output) == old and hidden_beside(output) == []


def test_a_failed_exchange_changes_nothing(scene, capsys, monkeypatch):
    argv, output, old, _ = scene

    def busy(first, second):
        raise OSError(errno.EBUSY, "Device or resource busy", str(second))

    monkeypatch.setattr(swap, "exchange_directories", busy)
    assert TOY.main(argv) == 2
    assert "device or resource busy while replacing it (out); --output is unchanged" in capsys.readouterr().err
    assert tree(output) == old and hidden_beside(output) == []


def test_exchange_swaps_two_directories_or_says_it_cannot(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    (first / "a").write_text("a")
    (second / "b").write_text("b")
    if swap.exchange_directories(first, second):
        assert [p.name for p in first.iterdir()] == ["b"] and [p.name for p in second.iterdir()] == ["a"]
    else:  # a system or file system without it: nothing moved
        assert [p.name for p in first.iterdir()] == ["a"] and [p.name for p in second.iterdir()] == ["b"]


def test_the_overwrite_keeps_the_mode_links_and_other_files_of_output(scene, capsys):
    argv, output, old, new = scene
    output.chmod(0o750)
    assert TOY.main(argv) == 0
    assert (output.stat().st_mode & 0o777) == 0o750
    assert tree(output) == new and (output / "latest").is_symlink()
    stale = sorted(name for name in old if name.startswith("model"))  # the earlier run's shards and index
    assert f"note: --overwrite replaced {['config.json', *stale]}" in capsys.readouterr().out


def test_a_linked_output_is_replaced_behind_its_link(scene, capsys):
    argv, output, _, new = scene
    link = output.parent / "link"
    link.symlink_to(output)
    assert TOY.main([*argv[:-2], str(link), "--overwrite"]) == 0
    assert link.is_symlink() and tree(link) == new and tree(output) == new


def test_a_live_run_is_never_disturbed(tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    staging = StagingDirectory(output, overwrite=True)  # a live run: it holds the lock on its staging directory
    dead = tmp_path / ".out.vlmzoo-staging-deadbeef"  # a killed run's: nobody holds its lock
    dead.mkdir()
    (dead / "model.safetensors").write_text("half written")
    notes = recover_interrupted_runs(output)
    assert notes == [f"removed '{dead}', the staging directory of a conversion that was interrupted"]
    assert staging.path.is_dir() and not dead.exists()
    journal = swap.journal_path(output)
    record = {"output": "out", "staging": staging.path.name, "old": ".out.vlmzoo-old-1", "new_inode": 1, "old_inode": 2}
    lock = swap._write_journal(journal, record)  # a swap in progress: its journal is locked
    with pytest.raises(ConversionError, match=r"another conversion is replacing --output '.*out' right now"):
        recover_interrupted_runs(output)
    assert journal.exists() and staging.path.is_dir()
    os.close(lock)
    staging.discard()
    # the run died; its journal names trees --output is neither of (someone replaced --output by hand since)
    with pytest.raises(ConversionError, match=r"records an interrupted replacement of --output '.*out', which has "
                       r"been replaced since"):  # fmt: skip
        recover_interrupted_runs(output)
    assert journal.exists() and output.is_dir()


@pytest.mark.parametrize(
    "record",
    ["{not json",
     json.dumps({"output": "out", "staging": "../etc", "old": ".out.vlmzoo-old-1", "new_inode": 1, "old_inode": 2})],
    ids=["corrupt", "names other directories"],
)  # fmt: skip
def test_a_journal_that_cannot_be_trusted_is_reported_and_nothing_is_removed(tmp_path, record):
    output = tmp_path / "outs" / "out"
    output.mkdir(parents=True)
    (output / "config.json").write_text("{}")
    (tmp_path / "etc").mkdir()
    swap.journal_path(output).write_text(record)
    before = tree(tmp_path)
    with pytest.raises(ConversionError, match=r"records an interrupted replacement of --output '.*out' but cannot be "
                       r"read; check"):  # fmt: skip
        recover_interrupted_runs(output)
    assert tree(tmp_path) == before
