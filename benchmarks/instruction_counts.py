"""Instructions per call, vlmzoo against its transformers reference: the host-overhead instrument for a busy machine.

Wall-clock ratios of ~2 ms calls move by ±0.05–0.10 on a shared machine; instruction counts do not. This runs the
pairs and workloads of ``compare_reference.py`` (same sizes, same inputs) under valgrind's callgrind, one region per
(mode, side) of ``--calls`` calls, regions bracketed by ``os.getppid()`` (callgrind dumps there), and prints the
instructions per call, ours / reference. Modes: ``prefill``, ``train``, ``generate`` (the benchmark's workloads) and
``decode`` (one decode step: the keyword arguments ``generate()`` passes on its second step, captured with a forward
pre-hook, on native BLIP-2's ``language_model``; the cache is cropped back after each call).

    python benchmarks/instruction_counts.py --family blip2 --modes prefill,decode,train --calls 20

Needs ``valgrind`` on the PATH; takes minutes (importing torch under callgrind is most of it). Instruction counts miss
stalls and Python code has a lower IPC than kernels, so a ratio understates the time ratio; differences rank fixes.
See ``host_overhead_notes.md``.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
MARK = "VLMZOO_UNDER_CALLGRIND"


def build_runners(family: str):
    import torch

    sys.path.insert(0, str(HERE))
    import compare_reference as cr

    torch.set_num_threads(1)
    pair = cr.PAIR_BUILDERS[family]("tiny", "sdpa", torch.device("cpu"), 0, 32)
    models = {"ours": pair.ours, "reference": pair.reference}
    workloads = {w.name: w for w in cr.make_workloads(pair, 32)}

    def stepped(side, model):  # native BLIP-2 decodes through its language model's own generate()
        return model.language_model if side == "reference" and family.startswith("blip2") else model

    captured = {}

    def capture(side):
        def hook(module, args, kwargs):
            cache = kwargs.get("past_key_values", kwargs.get("cache"))
            captured.setdefault(side, []).append((dict(kwargs), cache.get_seq_length() if cache is not None else 0))

        return hook

    handles = [stepped(s, m).register_forward_pre_hook(capture(s), with_kwargs=True) for s, m in models.items()]
    with torch.no_grad():
        for side, model in models.items():
            workloads["generate_tokens_per_s"].run(model, side)
    for handle in handles:
        handle.remove()
    steps = {side: captured[side][2] for side in models}

    def decode(model, side):
        kwargs, length = steps[side]
        cache = kwargs.get("past_key_values", kwargs.get("cache"))
        cache.crop(length - cache.get_seq_length())
        with torch.inference_mode():
            return stepped(side, model)(**kwargs)

    runners = {
        "prefill": workloads["prefill_latency"].run,
        "train": workloads["train_step_latency"].run,
        "generate": workloads["generate_tokens_per_s"].run,
        "decode": decode,
    }
    return models, runners


def run_regions(family: str, modes: list[str], calls: int, order_file: str) -> None:
    models, runners = build_runners(family)
    for mode in modes:
        for side, model in models.items():
            runners[mode](model, side)
            runners[mode](model, side)
    os.getppid()  # end of the setup region
    with open(order_file, "w") as order:
        for mode in modes:
            for side, model in models.items():
                for _ in range(calls):
                    runners[mode](model, side)
                os.getppid()
                order.write(f"{mode} {side} {calls}\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", default="blip2", choices=["llava", "blip2", "blip2-t5", "qwen2_vl"])
    parser.add_argument("--modes", default="prefill,decode,train", help="comma-separated: prefill,decode,train,generate")
    parser.add_argument("--calls", type=int, default=20, help="calls per region (generate: use a few)")
    args = parser.parse_args()
    modes = args.modes.split(",")
    if os.environ.get(MARK):
        run_regions(args.family, modes, args.calls, os.environ[MARK])
        return 0
    with tempfile.TemporaryDirectory() as folder:
        order = os.path.join(folder, "order.txt")
        command = [
            "valgrind", "--tool=callgrind", "--dump-before=os_getppid", f"--callgrind-out-file={folder}/cg.%p",
            sys.executable, __file__, *sys.argv[1:],
        ]  # fmt: skip
        result = subprocess.run(command, env={**os.environ, MARK: order}, capture_output=True, text=True)
        if result.returncode != 0 or not os.path.exists(order):
            sys.stderr.write(result.stderr[-4000:])
            return result.returncode or 1
        dumps = sorted(
            (path for path in glob.glob(f"{folder}/cg.*") if re.search(r"\.\d+\.\d+$", path)),
            key=lambda path: int(path.rsplit(".", 1)[1]),
        )
        totals = []
        for path in dumps:
            with open(path) as dump:
                totals.append(next(int(line.split()[1]) for line in dump if line.startswith(("summary:", "totals:"))))
        regions = [line.split() for line in open(order)]
        per_call = {(mode, side): total / int(n) for (mode, side, n), total in zip(regions, totals[1:])}
    for mode in modes:
        ours, reference = per_call[(mode, "ours")], per_call[(mode, "reference")]
        print(f"{args.family} {mode:8s} ours {ours / 1e3:10.0f}k  reference {reference / 1e3:10.0f}k  "
              f"diff {(ours - reference) / 1e3:+9.0f}k  ratio {ours / reference:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
