"""The ``vlmzoo`` console script (vlmzoo/cli.py) and what makes it quick (vlmzoo/__init__.py).

``vlmzoo --help`` lists every command with its line; a sub-command's usage line names it; an unknown or
mistyped flag is named (with the closest valid one), never an internal class; a bad ``vlmzoo demo`` argument,
``--output-dir`` included, is one line and exit 2 before any training. ``--help`` imports neither torch nor
transformers (which is what makes it answer in a fraction of a second), and ``import vlmzoo`` still registers
every family with the transformers Auto classes: the moment transformers is imported, whichever import brings
it in (checked in fresh interpreters).
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import vlmzoo
from vlmzoo import FAMILIES, cli, demo
from vlmzoo.cli import COMMANDS, main

ROOT = Path(__file__).resolve().parents[1]
CONVERTER_MODULES = sorted(path.stem[len("convert_") :] for path in (ROOT / "vlmzoo/conversion_scripts").glob("convert_*.py"))


def run_cli(capsys, *argv) -> tuple[int, str, list[str]]:
    """(exit code, stdout, the non-empty stderr lines) of ``vlmzoo argv``; ``--help`` exits through argparse."""
    try:
        code = main([str(arg) for arg in argv])
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, [line for line in captured.err.splitlines() if line.strip()]


def python(code: str) -> str:
    """Run ``code`` in a fresh interpreter (this worktree first on the path); returns its stdout."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


# ----- help --------------------------------------------------------------------------------------------------
def test_help_lists_every_command_with_its_line(capsys):
    for argv in ([], ["--help"], ["-h"]):
        code, out, err = run_cli(capsys, *argv)
        assert code == 0 and err == []
        lines = out.splitlines()
        assert lines[0] == "usage: vlmzoo <command> [args]"
        width = max(len(name) for name in COMMANDS.keys())
        for name in COMMANDS.keys():
            summary = COMMANDS.get(name).summary
            assert len(summary) > 20
            assert [line for line in lines if line.split()[:1] == [name]] == [f"  {name:<{width}}  {summary}"]


def test_convert_help_lists_the_families_that_have_a_converter(capsys):
    code, out, _ = run_cli(capsys, "convert", "--help")
    assert code == 0 and out.startswith("usage: vlmzoo convert <family> --source SOURCE --input DIR --output DIR")
    assert f"families: {', '.join(CONVERTER_MODULES)}; see vlmzoo convert <family> --help" in out
    assert set(CONVERTER_MODULES) <= set(FAMILIES.keys())


def test_help_imports_neither_torch_nor_transformers():
    for argv in (["--help"], ["convert", "--help"]):
        out = python(
            "import sys, contextlib, io\n"
            "from vlmzoo.cli import main\n"
            f"with contextlib.redirect_stdout(io.StringIO()): code = main({argv!r})\n"
            "print(code, sorted(m for m in ('torch', 'transformers', 'safetensors', 'PIL') if m in sys.modules))"
        )
        assert out.split("\n")[0] == "0 []", (argv, out)


@pytest.mark.parametrize("argv, usage", [(["convert", "llava", "--help"], "usage: vlmzoo convert llava [-h]"),
                                         (["convert", "blip2", "--help"], "usage: vlmzoo convert blip2 [-h]"),
                                         (["demo", "--help"], "usage: vlmzoo demo [-h]")])  # fmt: skip
def test_a_subcommands_usage_line_names_it(capsys, argv, usage):
    code, out, _ = run_cli(capsys, *argv)
    assert code == 0 and out.startswith(usage)


@pytest.mark.parametrize("family", ["blip2", "instructblip"])
def test_the_qformer_converters_help_names_every_language_model_kind_they_take(capsys, family):
    code, out, _ = run_cli(capsys, "convert", family, "--help")
    help_text = " ".join(out.split())
    assert code == 0 and "(decoder-only LM)" not in help_text
    assert "a decoder-only LM such as OPT" in help_text and "such as Flan-T5" in help_text
    for model_type in FAMILIES.get(family).config_class.encoder_decoder_language_models:
        assert model_type in help_text


# ----- user errors: one line, exit 2 --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "argv, line",
    [(["frob"], "vlmzoo: error: unknown command 'frob'; valid keys: convert, demo (see vlmzoo --help)"),
     (["demo", "--frobnicate"], "vlmzoo demo: error: unrecognized arguments: --frobnicate (see vlmzoo demo --help)"),
     (["demo", "--outptu-dir", "x"], "vlmzoo demo: error: unrecognized arguments: --outptu-dir x (--outptu-dir: did "
                                     "you mean --output"),
     (["demo", "--batch-size", "abc"], "vlmzoo demo: error: argument --batch_size/--batch-size: invalid int value: 'abc'"),
     (["demo", "--quick", "maybe"], "vlmzoo demo: error: argument --quick: Truthy value expected: got maybe"),
     (["demo", "--num-eval", "0"], "vlmzoo demo: error: --num-eval must be >= 1, got 0"),
     (["convert", "test_two_towers"], "vlmzoo: error: family 'test_two_towers' has no converter yet (families with "
                                      f"one: {', '.join(CONVERTER_MODULES)})"),
     (["convert", "llava", "--sorce", "hf"], "vlmzoo convert llava: error: the following arguments are required: "
                                             "--source, --input, --output")],
    ids=["unknown command", "unknown flag", "mistyped flag", "bad int", "bad bool", "bad value", "no converter",
         "mistyped required flag"],
)  # fmt: skip
def test_user_errors_are_one_line_naming_what_was_wrong(capsys, monkeypatch, argv, line):
    monkeypatch.setattr(demo, "run_demo", lambda args: pytest.fail("the demo trained despite a bad argument"))
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(line), err[0]
    assert "HfArgumentParser" not in err[0] and "usage:" not in err[0]


def _deny_writes_in(directory: Path, monkeypatch) -> None:
    """EACCES for a directory made in ``directory`` (root ignores permissions, so the kernel's refusal is
    reproduced where the demo meets it; other users get the real one from chmod)."""
    directory.chmod(0o555)
    if os.geteuid() == 0:
        real_mkdtemp = tempfile.mkdtemp

        def mkdtemp(*args, dir=None, **kwargs):
            if dir is not None and Path(dir) == directory:
                raise PermissionError(errno.EACCES, "Permission denied", str(directory))
            return real_mkdtemp(*args, dir=dir, **kwargs)

        monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)


@pytest.mark.parametrize("case", ["under a file", "a file", "empty", "not writable"])
def test_a_bad_demo_output_dir_is_refused_before_training(case, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(demo, "run_demo", lambda args: pytest.fail("the demo trained despite a bad --output-dir"))
    (tmp_path / "notes.txt").write_text("mine")
    locked = tmp_path / "locked"
    locked.mkdir()
    output_dir, message = {
        "under a file": (tmp_path / "notes.txt" / "out", f"cannot be created: '{tmp_path / 'notes.txt'}' is a file"),
        "a file": (tmp_path / "notes.txt", "is an existing file, not a directory"),
        "empty": ("", "--output-dir is empty; name the directory for the trained model"),
        "not writable": (locked / "new" / "out", f"cannot be written: permission denied in '{locked}'"),
    }[case]
    if case == "not writable":
        _deny_writes_in(locked, monkeypatch)
    try:
        code, _, err = run_cli(capsys, "demo", "--quick", "--output-dir", output_dir)
    finally:
        locked.chmod(0o755)
    assert code == 2 and len(err) == 1 and err[0].startswith("vlmzoo demo: error: --output-dir"), err
    assert message in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["locked", "notes.txt"] and not list(locked.iterdir())


def test_a_good_demo_output_dir_is_accepted_and_left_as_it_was(tmp_path):
    args = demo.parse_args(["--quick", "--output-dir", str(tmp_path / "a" / "b")])
    assert args.output_dir == str(tmp_path / "a" / "b")
    assert list(tmp_path.iterdir()) == []  # the write probe is removed; nothing is created before the run


def test_suggestions_name_the_closest_flag_only_when_one_is_close():
    options = ["--output", "--overwrite", "--input"]
    assert cli.with_suggestions("unrecognized arguments: --ovewrite", options) == (
        "unrecognized arguments: --ovewrite (--ovewrite: did you mean --overwrite?)"
    )
    assert cli.with_suggestions("unrecognized arguments: --zzz 3", options) == "unrecognized arguments: --zzz 3"
    assert cli.with_suggestions("argument --input: expected one argument", options) == (
        "argument --input: expected one argument"
    )


# ----- import vlmzoo: cheap, and every family still registered -----------------------------------------------------
REGISTERED = (
    "from transformers import AutoConfig, AutoModel\n"
    "import vlmzoo\n"
    "from vlmzoo.auto import FAMILY_TABLE\n"
    "for family in FAMILY_TABLE:\n"
    "    assert type(AutoConfig.for_model(family.config_class.model_type)) is family.config_class\n"
    "    assert AutoModel._model_mapping[family.config_class] is family.model_class\n"
    "print('registered', len(FAMILY_TABLE))\n"
)


@pytest.mark.parametrize(
    "first",
    ["import vlmzoo, sys; assert 'torch' not in sys.modules and 'transformers' not in sys.modules",
     "import transformers, vlmzoo",
     "import vlmzoo, peft",
     "import vlmzoo.modeling.modeling_llava",
     "from vlmzoo.configuration.configuration_blip2 import ZooBlip2Config",
     "import vlmzoo.training"],
    ids=["vlmzoo alone", "transformers first", "peft brings transformers", "a model module first",
         "a config module first", "training first"],
)  # fmt: skip
def test_import_vlmzoo_registers_every_family_whichever_import_brings_transformers(first):
    out = python(f"{first}\n{REGISTERED}")
    assert out.strip().endswith(f"registered {len(vlmzoo.FAMILY_TABLE)}")


def test_every_public_name_loads_on_first_use():
    out = python(
        "import vlmzoo\n"
        "names = list(vlmzoo.__all__)\n"
        "from vlmzoo import *\n"
        "assert all(isinstance(globals()[name], type) or callable(globals()[name]) or name == 'FAMILIES' for name in names)\n"
        "assert set(names) <= set(dir(vlmzoo)) and vlmzoo.FAMILY_TABLE\n"
        "try:\n"
        "    vlmzoo.no_such_name\n"
        "except AttributeError as error:\n"
        "    print(len(names), error)\n"
    )
    count, message = out.strip().split(" ", 1)
    assert int(count) > 6 and message == "module 'vlmzoo' has no attribute 'no_such_name'"
