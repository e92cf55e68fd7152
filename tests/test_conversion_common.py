"""The shared conversion machinery on a tiny synthetic family (no real model, milliseconds per test).

A toy checkpoint holds a fused ``qkv`` that must be split into ``q`` / ``k`` / ``v`` of unequal widths (as in
grouped-query attention), separate ``q`` / ``k`` / ``v`` projections that must be concatenated into one fused
weight (their parts spread over two shards), a plain rename, a dead tensor and a recomputed buffer. The tests
check the plan's accounting, the shape checks done before writing, the streamed output (values, sharding by
``huggingface_hub``, index), the source registry and ``--encoder NAME=DIR``, and the staging directory: a
failing run leaves ``--output`` exactly as it was, with no temporary files beside it. Hostile paths (an empty
``--output``, the current directory, a mount point, a dangling link) and damaged inputs (truncated safetensors
headers and data, a shard cut short while it is being read, a dtype the converter does not read) are one line
naming the argument or the file. Kills and full disks are in ``test_conversion_swap.py``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from huggingface_hub import split_torch_state_dict_into_shards
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedConfig

from vlmzoo.conversion_scripts import common, writing
from vlmzoo.conversion_scripts.common import (
    CheckpointReader,
    ConversionError,
    ConversionJob,
    Converter,
    ExpectedTensors,
    KeyTable,
    Merge,
    Split,
    TensorSource,
    check_shapes,
    expected_tensors,
    plan_conversion,
)
from vlmzoo.conversion_scripts.key_tables import OutputTensor
from vlmzoo.conversion_scripts.writing import ShardedSafetensorsWriter, parse_shard_size

from _reference_llava import snapshot

WIDTH = 4
HEADS = {"q": 8, "k": 2, "v": 2}  # unequal widths: a split must follow the target shapes, not cut in thirds


class ToyModel(nn.Module):
    """Targets: per-layer q/k/v (from a fused qkv), one fused projection (from separate q/k/v), a head."""

    def __init__(self, config=None):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleDict({name: nn.Linear(WIDTH, width) for name, width in HEADS.items()}) for _ in range(2)
        )
        self.fused = nn.Linear(WIDTH, sum(HEADS.values()))
        self.head = nn.Linear(WIDTH, 3, bias=False)


TOY_TABLE = KeyTable(
    [
        Split(r"blocks\.(\d+)\.qkv\.(weight|bias)", [r"layers.\1.q.\2", r"layers.\1.k.\2", r"layers.\1.v.\2"]),
        Merge(r"mlp\.(?P<part>[a-z])_proj\.(weight|bias)", r"fused.\2", parts=("q", "k", "v")),
        (r"head\.(.+)", r"head.\1"),
    ]
)


def toy_source_state(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    total = sum(HEADS.values())
    state = {}
    for layer in range(2):
        state[f"blocks.{layer}.qkv.weight"] = torch.randn(total, WIDTH, generator=generator)
        state[f"blocks.{layer}.qkv.bias"] = torch.randn(total, generator=generator)
    for name, width in HEADS.items():
        state[f"mlp.{name}_proj.weight"] = torch.randn(width, WIDTH, generator=generator)
        state[f"mlp.{name}_proj.bias"] = torch.randn(width, generator=generator)
    state["mlp.o_proj.weight"] = torch.randn(WIDTH, WIDTH, generator=generator)  # matches the merge, not a part
    state["head.weight"] = torch.randn(3, WIDTH, generator=generator)
    state["rotary_emb.inv_freq"] = torch.ones(2)  # a buffer current models recompute
    return state


def write_sharded(directory: Path, state: dict[str, torch.Tensor], shards: list[list[str]]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    weight_map = {}
    for number, names in enumerate(shards, start=1):
        file_name = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        save_file({name: state[name] for name in names}, directory / file_name, metadata={"format": "pt"})
        weight_map.update({name: file_name for name in names})
    index = {"metadata": {}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    return directory


@pytest.fixture
def toy_input(tmp_path) -> Path:
    """Two shards; the merge's parts are split across them (q in the first, k and v in the second)."""
    state = toy_source_state()
    first = [k for k in state if k.startswith("blocks.0.") or k.startswith("mlp.q_proj")]
    return write_sharded(tmp_path / "input", state, [first, [k for k in state if k not in first]])


def toy_expected() -> ExpectedTensors:
    return expected_tensors(ToyModel, None)


# ----- the toy family: registry, --encoder, run -----------------------------------------------------------
TOY = Converter("toy", description="a synthetic family for the tests")


@TOY.source("flat", help="the toy layout", encoders=("vision", "aux"))
def prepare_toy(arguments) -> ConversionJob:
    sources = [TensorSource(CheckpointReader(arguments.input, label="input"), TOY_TABLE)]
    return ConversionJob(sources=sources, model_class=ToyModel, config=PreTrainedConfig(),
                         notes=[f"encoders: {sorted(arguments.encoders)}"])  # fmt: skip


@TOY.source("plain", help="the toy layout, no encoders")
def prepare_plain(arguments) -> ConversionJob:
    return prepare_toy(arguments)


def run_toy(capsys, *argv) -> tuple[int, str, str]:
    code = TOY.main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_user_error(capsys, parent: Path, argv: list, *fragments: str) -> str:
    """The run exits 2 with one error line holding ``fragments`` and changes nothing under ``parent``."""
    before = snapshot(parent)
    code, _, err = run_toy(capsys, *argv)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("vlmzoo convert toy: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert snapshot(parent) == before
    return lines[0]


def test_split_and_merge_stream_into_hub_shards(toy_input, tmp_path, capsys):
    output = tmp_path / "outs" / "out"
    code, out, _ = run_toy(capsys, "--source", "flat", "--input", toy_input, "--output", output,
                           "--max-shard-size", "200", "--allow-unused", r"^mlp\.o_proj\.")  # fmt: skip
    assert code == 0, out
    state = toy_source_state()
    # 4 split + 6 merged + head (the recomputed buffer is a note); o_proj is the one unused tensor
    assert "converted 11 tensors, 1 unused, 0 missing" in out
    written = {}
    for path in output.glob("model-*-of-*.safetensors"):
        written.update(load_file(path))
    model = ToyModel()
    model.load_state_dict(written, strict=True)
    for layer in range(2):
        q, k, v = torch.split(state[f"blocks.{layer}.qkv.weight"], list(HEADS.values()))
        assert torch.equal(model.layers[layer]["k"].weight, k) and torch.equal(model.layers[layer]["v"].weight, v)
        assert torch.equal(model.layers[layer]["q"].weight, q)
    fused = torch.cat([state[f"mlp.{name}_proj.weight"] for name in ("q", "k", "v")])  # parts order, not key order
    assert torch.equal(model.fused.weight, fused)
    # the shard plan is huggingface_hub's for the tensors in writing order
    index = json.loads((output / "model.safetensors.index.json").read_text())
    order = list(check_shapes(*_toy_plan(toy_input)).keys())
    hub = split_torch_state_dict_into_shards({name: written[name] for name in order}, max_shard_size=200)
    assert index["weight_map"] == hub.tensor_to_filename and index["metadata"] == hub.metadata
    assert len(hub.filename_to_tensors) > 2
    assert [p.name for p in output.parent.iterdir()] == ["out"]  # no staging directory left beside it
    assert json.loads((output / "config.json").read_text())["architectures"] == ["ToyModel"]


def _toy_plan(directory: Path):
    sources = [TensorSource(CheckpointReader(directory, label="input"), TOY_TABLE)]
    expected = toy_expected()
    return plan_conversion(sources, expected), sources, expected


def test_plan_accounts_for_every_tensor_of_split_and_merge(toy_input):
    plan, sources, _ = _toy_plan(toy_input)
    converted = sorted(key for _, key in plan.converted)
    assert len(converted) == 4 + 6 + 1
    assert [key for _, key in plan.unused] == ["mlp.o_proj.weight"]
    assert [key for _, key in plan.recomputed] == ["rotary_emb.inv_freq"]
    assert plan.missing == []
    merge = next(m for m in plan.mappings if m.targets == ("fused.weight",))
    assert [key for _, key in merge.inputs] == ["mlp.q_proj.weight", "mlp.k_proj.weight", "mlp.v_proj.weight"]
    split = next(m for m in plan.mappings if m.inputs == (("input", "blocks.1.qkv.bias"),))
    assert split.targets == ("layers.1.q.bias", "layers.1.k.bias", "layers.1.v.bias")
    every_key = set(sources[0].reader.keys())
    accounted = set(converted) | {k for _, k in plan.unused} | {k for _, k in plan.recomputed}
    assert accounted == every_key and len(converted) + 2 == len(every_key)


def test_incomplete_merge_reports_target_missing_and_parts_unused(tmp_path, capsys):
    state = toy_source_state()
    del state["mlp.v_proj.weight"]
    directory = write_sharded(tmp_path / "input", state, [list(state)])
    plan, _, _ = _toy_plan(directory)
    assert plan.missing == ["fused.weight"]
    assert {k for _, k in plan.unused} == {"mlp.q_proj.weight", "mlp.k_proj.weight", "mlp.o_proj.weight"}
    code, out, _ = run_toy(capsys, "--source", "flat", "--input", directory, "--output", tmp_path / "out",
                           "--allow-unused", ".*")  # fmt: skip
    assert code == 1 and "converted 8 tensors, 3 unused, 1 missing" in out and "fused.weight" in out
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "key, shape, message",
    [
        ("blocks.1.qkv.weight", (11, WIDTH), r"'blocks\.1\.qkv\.weight' in '.*model-00002-of-00002\.safetensors' has "
                                             r"shape \(11, 4\); splitting it along dim 0 .* needs 12 there"),
        ("mlp.k_proj.weight", (2, 5), r"cannot concatenate shapes \[\(8, 4\), \(2, 5\), \(2, 4\)\] along dim 0"),
        ("mlp.k_proj.bias", (3,), r"has shape \(8,\) \+ \(3,\) \+ \(2,\), which gives \(13,\), but 'fused\.bias'"),
        ("head.weight", (3, 5), r"'head\.weight' in '.*model-00002-of-00002\.safetensors' has shape \(3, 5\)"),
    ],
)
def test_shape_mismatch_is_found_while_planning(toy_input, tmp_path, capsys, key, shape, message):
    state = {k: v for k, v in load_file(toy_input / "model-00002-of-00002.safetensors").items()}
    state[key] = torch.zeros(shape)
    save_file(state, toy_input / "model-00002-of-00002.safetensors", metadata={"format": "pt"})
    plan, sources, expected = _toy_plan(toy_input)
    with pytest.raises(ConversionError, match=message):
        check_shapes(plan, sources, expected)
    # end to end: nothing is written, not even a staging directory, and an existing output is untouched
    output = tmp_path / "outs" / "out"
    output.mkdir(parents=True)
    (output / "notes.txt").write_text("mine")
    line = assert_user_error(capsys, tmp_path / "outs", ["--source", "flat", "--input", toy_input, "--output",
                             output, "--allow-unused", "o_proj"])  # fmt: skip
    assert re.search(message, line)


def test_split_with_a_function_and_unknown_targets():
    halves = Split(r"gate_up\.weight", [r"gate.weight", r"up.weight"], fn=lambda t: t.chunk(2, dim=0))
    table = KeyTable([halves, Split(r"qkv", [r"q", r"nowhere"])])
    expected = ExpectedTensors(shapes={"gate.weight": torch.Size([2, 3]), "up.weight": torch.Size([2, 3]),
                                       "q": torch.Size([1])}, tied={})  # fmt: skip

    class Reader:
        label, directory = "input", Path("mem")
        tensors = {"gate_up.weight": common.TensorInfo(Path("mem/a.safetensors"), (4, 3), torch.float32)}

        def keys(self):
            return list(self.tensors)

    plan = plan_conversion([TensorSource(Reader(), table)], expected)
    layout = check_shapes(plan, [TensorSource(Reader(), table)], expected)
    assert layout == {"gate.weight": OutputTensor((2, 3), torch.float32), "up.weight": OutputTensor((2, 3), torch.float32)}
    assert plan.missing == ["q"]
    Reader.tensors = {"qkv": common.TensorInfo(Path("mem/a.safetensors"), (2,), torch.float32)}
    with pytest.raises(ConversionError, match=r"'qkv' in 'mem/a\.safetensors' splits into \['q', 'nowhere'\], but "
                                              r"the converted model has no \['nowhere'\]"):  # fmt: skip
        plan_conversion([TensorSource(Reader(), table)], expected)


def test_merge_rule_needs_a_part_group():
    with pytest.raises(ValueError, match=r"needs a named group \(\?P<part>"):
        KeyTable([Merge(r"mlp\.(q|k)_proj", "fused", parts=("q", "k"))])


# ----- the source registry and --encoder NAME=DIR ---------------------------------------------------------
def test_encoders_are_named_repeatable_and_checked(toy_input, tmp_path, capsys):
    vision, aux = tmp_path / "vision", tmp_path / "aux"
    vision.mkdir(), aux.mkdir()
    base = ["--source", "flat", "--input", toy_input, "--allow-unused", "o_proj"]
    code, out, _ = run_toy(capsys, *base, "--output", tmp_path / "o1", "--encoder", f"vision={vision}",
                           "--encoder", f"aux={aux}")  # fmt: skip
    assert code == 0 and "encoders: ['aux', 'vision']" in out
    parent = tmp_path
    assert_user_error(capsys, parent, [*base, "--output", tmp_path / "o2", "--encoder", vision],
                      f"--encoder '{vision}' needs a name (NAME=DIR): --source flat takes ['vision', 'aux']")
    assert_user_error(capsys, parent, [*base, "--output", tmp_path / "o2", "--encoder", f"sam={vision}"],
                      "unknown encoder name 'sam'")
    assert_user_error(capsys, parent, [*base, "--output", tmp_path / "o2", "--encoder", f"aux={vision}",
                                       "--encoder", f"aux={aux}"], "--encoder aux is given twice")  # fmt: skip
    assert_user_error(capsys, parent, [*base, "--output", tmp_path / "o2", "--encoder", f"aux={tmp_path / 'none'}"],
                      "--encoder aux: directory", "does not exist")
    plain = ["--source", "plain", "--input", toy_input, "--output", tmp_path / "o2", "--encoder", f"aux={aux}"]
    assert_user_error(capsys, parent, plain, "--encoder is not used with --source plain")


def test_argument_errors_are_one_line_and_exit_2(toy_input, tmp_path, capsys):
    base = ["--input", toy_input, "--output", tmp_path / "out"]
    assert_user_error(capsys, tmp_path, ["--source", "nope", *base], "argument --source: invalid choice: 'nope'")
    assert_user_error(capsys, tmp_path, ["--source", "flat", *base, "--frobnicate"], "unrecognized arguments: --frobnicate")
    assert_user_error(capsys, tmp_path, ["--source", "flat", *base, "--overwirte"],  # a typo: the closest flag is named
                      "unrecognized arguments: --overwirte (--overwirte: did you mean --overwrite?)")
    assert_user_error(capsys, tmp_path, ["--source", "flat", *base, "--allow-unused", "("], "--allow-unused '('")
    with pytest.raises(SystemExit, match="0"):
        TOY.main(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "flat: the toy layout; plain: the toy layout, no encoders" in help_text
    assert "Encoder names: --source flat: vision, aux" in help_text


@pytest.mark.parametrize("text, size", [("60KB", 60_000), ("1.5MB", 1_500_000), ("123", 123), (" 5GB ", 5 * 10**9)])
def test_shard_size_parsing(text, size):
    assert parse_shard_size(text) == size


@pytest.mark.parametrize("text", ["5XB", "0KB", "-3", "big"])
def test_shard_size_refused_before_anything_is_touched(toy_input, tmp_path, capsys, text):
    with pytest.raises(ConversionError, match=re.escape(f"--max-shard-size '{text}'")):
        parse_shard_size(text)
    output = tmp_path / "outs" / "out"
    output.mkdir(parents=True)
    (output / "model.safetensors").write_bytes(b"an earlier conversion")
    assert_user_error(capsys, tmp_path / "outs", ["--source", "flat", "--input", toy_input, "--output", output,
                      "--overwrite", "--max-shard-size", text], f"--max-shard-size '{text.strip() or text}'")  # fmt: skip


# ----- writing and staging --------------------------------------------------------------------------------
def test_writer_saves_each_shard_as_soon_as_it_is_complete(tmp_path):
    layout = {f"t{i}": OutputTensor((10,), torch.float32) for i in range(5)}  # 40 bytes each
    writer = ShardedSafetensorsWriter(tmp_path, layout, max_shard_size=100)
    assert list(writer.split.filename_to_tensors.values()) == [["t0", "t1"], ["t2", "t3"], ["t4"]]
    writer.add("t0", torch.zeros(10))
    assert not list(tmp_path.iterdir())
    writer.add("t1", torch.ones(10))
    assert [p.name for p in tmp_path.iterdir()] == ["model-00001-of-00003.safetensors"]
    assert writer._buffers["model-00001-of-00003.safetensors"] == {}  # released once saved
    with pytest.raises(RuntimeError, match=r"did not receive all their tensors"):
        writer.close()
    for name in ("t2", "t3", "t4"):
        writer.add(name, torch.full((10,), 2.0))
    writer.close()
    writer.verify()
    assert json.loads((tmp_path / "model.safetensors.index.json").read_text())["weight_map"]["t4"] == (
        "model-00003-of-00003.safetensors"
    )


def test_overwrite_replaces_files_and_stale_shards_keeps_the_rest(toy_input, tmp_path, capsys):
    output = tmp_path / "out"
    code, _, _ = run_toy(capsys, "--source", "flat", "--input", toy_input, "--output", output, "--max-shard-size",
                         "200", "--allow-unused", "o_proj")  # fmt: skip
    assert code == 0 and len(list(output.glob("model-*.safetensors"))) > 1
    (output / "README.md").write_text("my notes")
    code, out, _ = run_toy(capsys, "--source", "flat", "--input", toy_input, "--output", output, "--overwrite",
                           "--allow-unused", "o_proj")  # fmt: skip
    assert code == 0 and "--overwrite replaced" in out
    assert sorted(p.name for p in output.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert (output / "README.md").read_text() == "my notes"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_bug_keeps_its_traceback_and_leaves_nothing(toy_input, tmp_path, monkeypatch):
    def broken_add(self, name, tensor):
        raise TypeError("a bug in the writer")

    monkeypatch.setattr(ShardedSafetensorsWriter, "add", broken_add)
    output = tmp_path / "outs" / "out"
    output.mkdir(parents=True)
    (output / "mine.txt").write_text("keep me")
    before = snapshot(tmp_path / "outs")
    with pytest.raises(TypeError, match="a bug in the writer"):
        TOY.main(["--source", "flat", "--input", str(toy_input), "--output", str(output), "--allow-unused", "o_proj"])
    assert snapshot(tmp_path / "outs") == before

    def broken_prepare(arguments):
        raise RuntimeError("a bug while preparing")

    monkeypatch.setitem(TOY.sources._entries, "plain", common.SourceSpec("plain", broken_prepare, "broken"))
    with pytest.raises(RuntimeError, match="a bug while preparing"):
        TOY.main(["--source", "plain", "--input", str(toy_input), "--output", str(output)])
    assert snapshot(tmp_path / "outs") == before


# ----- hostile paths and damaged inputs -------------------------------------------------------------------
def test_empty_paths_are_refused_instead_of_meaning_the_current_directory(toy_input, tmp_path, capsys, monkeypatch):
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    base = ["--source", "flat", "--allow-unused", "o_proj"]
    for empty in ("", "  "):
        assert_user_error(capsys, tmp_path, [*base, "--input", toy_input, "--output", empty],
                          "--output is empty (it would mean the current directory)")  # fmt: skip
    shutil.copytree(toy_input, here, dirs_exist_ok=True)  # an --input '' would find a checkpoint here
    assert_user_error(capsys, tmp_path, [*base, "--input", "", "--output", tmp_path / "out"], "--input is empty")
    assert_user_error(capsys, tmp_path, [*base, "--input", toy_input, "--output", tmp_path / "out", "--encoder",
                                         "aux= "], "--encoder 'aux= ' names no directory; pass --encoder aux=DIR")


def test_the_current_directory_a_mount_point_and_a_dangling_link_are_refused(toy_input, tmp_path, capsys, monkeypatch):
    base = ["--source", "flat", "--input", toy_input, "--allow-unused", "o_proj", "--overwrite"]
    output = tmp_path / "outs" / "out"
    output.mkdir(parents=True)
    (output / "notes.txt").write_text("mine")
    monkeypatch.chdir(output)  # replacing --output as a whole would leave the shell in a removed directory
    assert_user_error(capsys, tmp_path / "outs", [*base, "--output", "."], "--output '.' is the current directory",
                      f"run it from outside (e.g. from '{tmp_path / 'outs'}' with --output out)")
    monkeypatch.chdir(tmp_path)
    real_ismount = os.path.ismount
    monkeypatch.setattr(os.path, "ismount", lambda path: Path(path) == output or real_ismount(path))
    assert_user_error(capsys, tmp_path / "outs", [*base, "--output", output], f"--output '{output}' is a mount point")
    link = tmp_path / "links" / "link"  # kept out of the snapshot, which cannot stat a dangling link
    link.parent.mkdir()
    link.symlink_to(tmp_path / "nowhere")
    assert_user_error(capsys, tmp_path / "outs", [*base, "--output", link],
                      f"--output '{link}' is a link to '{tmp_path / 'nowhere'}', which does not exist")


def _cut_header(path: Path) -> None:
    data = path.read_bytes()
    header_length = int.from_bytes(data[:8], "little")
    path.write_bytes(data[: 8 + header_length // 2])


DAMAGED_SAFETENSORS = {
    "header cut short": (_cut_header, "invalid header length"),
    "data cut short": (lambda path: path.write_bytes(path.read_bytes()[:-1]), "incomplete metadata, file not fully covered"),
    "empty": (lambda path: path.write_bytes(b""), "header too small"),
    "length field only": (lambda path: path.write_bytes(path.read_bytes()[:5]), "header too small"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(DAMAGED_SAFETENSORS))
def test_a_damaged_safetensors_shard_is_named(case, toy_input, tmp_path, capsys):
    damage, cause = DAMAGED_SAFETENSORS[case]
    shard = toy_input / "model-00002-of-00002.safetensors"
    damage(shard)
    argv = ["--source", "flat", "--input", toy_input, "--output", tmp_path / "outs" / "out", "--allow-unused", "o_proj"]
    (tmp_path / "outs").mkdir()
    assert_user_error(capsys, tmp_path / "outs", argv, f"'{shard}' is truncated or corrupt: ", cause)


def test_a_shard_cut_short_while_it_is_read_is_named(toy_input, tmp_path, capsys, monkeypatch):
    shard = toy_input / "model-00002-of-00002.safetensors"
    real_iter = CheckpointReader.iter_tensors

    def cut_after_the_scan(self):  # the headers were read and checked; then the file is cut (a copy still running)
        shard.write_bytes(shard.read_bytes()[:-8])
        yield from real_iter(self)

    monkeypatch.setattr(CheckpointReader, "iter_tensors", cut_after_the_scan)
    (tmp_path / "outs").mkdir()
    argv = ["--source", "flat", "--input", toy_input, "--output", tmp_path / "outs" / "out", "--allow-unused", "o_proj"]
    assert_user_error(capsys, tmp_path / "outs", argv, f"'{shard}' is truncated or corrupt: ")


def test_a_dtype_the_converter_does_not_read_is_named(toy_input, tmp_path, capsys):
    # a valid file (safetensors lists it) whose dtype torch has no type for
    header = json.dumps({"head.weight": {"dtype": "F6_E2M3", "shape": [4], "data_offsets": [0, 3]}}).encode()
    header += b" " * (-len(header) % 8)
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 3)
    argv = ["--source", "plain", "--input", odd, "--output", tmp_path / "out"]
    assert_user_error(capsys, tmp_path, argv, f"'{odd / 'model.safetensors'}' holds 'head.weight' of dtype F6_E2M3, "
                      "which the converter does not read (it reads F64, F32")  # fmt: skip
