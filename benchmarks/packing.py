"""Padding-free training against padded training: tokens/s of a training step and the share of padding removed.

Owns ``python benchmarks/packing.py``. The same samples -- synthetic one-shape pictures at mixed resolutions (so
LLaVA-NeXT's AnyRes tiling gives each a different number of image tokens) with answers of different lengths -- are
collated twice by ``vlmzoo.training.VLMDataCollator``: padded (one row per sample, right padding) and packed
(``packing=True``: one row, no padding, attention kept per sample by the skeleton). Each batch is then timed as a
training step (``model.train()``, forward with labels, backward, SGD step on every parameter), padded and packed
runs interleaved after a warm-up, medians reported.

- tokens/s = the batch's real tokens (image tokens included, padding excluded) / median step time;
- padding share = padding positions / all positions of the padded batch (what packing removes);
- honesty check: before timing, the packed and padded losses of every batch must agree (|diff| <= 1e-4 in fp32),
  so both sides compute the same step.

The table goes to stdout; the JSON (arguments, sizes, per batch-size results with every time, environment) to
``benchmarks/results/packing.json`` and a bar chart of tokens/s (with the padding share) to ``packing.png`` beside
it, drawn with PIL (matplotlib is not a dependency).
"""

from __future__ import annotations

import json
import os
import platform
import random
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import PIL.Image
import PIL.ImageDraw
import torch
import transformers
from transformers import HfArgumentParser

import vlmzoo
from vlmzoo import presets
from vlmzoo.synthetic import COLORS, POSITIONS, SHAPE_PAINTERS
from vlmzoo.training import VLMDataCollator

RESULTS_DIR = Path(__file__).resolve().parent / "results"
LOSS_TOLERANCE = 1e-4

# (width, height) of the pictures: squares, landscapes and portraits, small and large, so AnyRes picks grids of 1 to
# 4 tiles (2 to 5 views with the base view) and the samples' image tokens differ
IMAGE_SIZES = ((64, 64), (192, 64), (64, 192), (128, 128), (128, 64), (40, 120), (200, 200), (96, 48))
# answers from one word to a detailed description (~150 tokens), as instruction data mixes short answers with long
# ones: with the images' token counts, samples of about 50 to 250 tokens
_DESCRIPTION = (
    "The picture shows one {color} {shape}, drawn on the {position} side of a plain background; nothing else is "
    "in it, and the {shape} is the only object to describe."
)
ANSWERS = (
    "{color}.",
    "A {color} {shape}.",
    "The shape is on the {position}.",
    _DESCRIPTION,
    _DESCRIPTION + " Its edges are sharp and its colour is flat, without shading or texture, so the {shape} stands "
    "out clearly from the light grey background around it. It takes up a fair part of the picture but stays well "
    "inside the border, and its centre lies on the {position} half, which is why the answer to where it is would be "
    "the {position}. There is no text, no second shape and no shadow anywhere in the image.",
)


@dataclass
class PackingArguments:
    size: Literal["tiny", "small"] = field(
        default="small", metadata={"help": "'small': a 4-layer, 768-wide Llama; 'tiny': the 2-layer test preset"}
    )
    batch_sizes: list[int] = field(default_factory=lambda: [4, 8, 16], metadata={"help": "samples per step"})
    repeats: int = field(default=3, metadata={"help": "timed runs per side and batch size (medians reported)"})
    warmup: int = field(default=1, metadata={"help": "untimed runs per side and batch size first"})
    threads: int | None = field(default=None, metadata={"help": "torch.set_num_threads (default: all CPU cores)"})
    attn_implementation: Literal["sdpa", "eager"] = field(default="sdpa", metadata={"help": "attention, both sides"})
    seed: int = field(default=0, metadata={"help": "seed of the init and of the samples"})
    output: str | None = field(default=None, metadata={"help": "JSON path (default benchmarks/results/packing.json)"})


def text_config(size: str, tokenizer_length: int) -> dict | None:
    """The language model of the ``small`` size (the ``tiny`` preset keeps its own)."""
    if size == "tiny":
        return None
    return {
        "model_type": "llama", "vocab_size": tokenizer_length, "hidden_size": 768, "intermediate_size": 2048,
        "num_hidden_layers": 4, "num_attention_heads": 12, "num_key_value_heads": 12, "max_position_embeddings": 2048,
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
    }  # fmt: skip


def build(size: str, attn_implementation: str, seed: int):
    """LLaVA-NeXT in miniature (AnyRes over 64 px tiles, ``tiny-anyres``), with the size's language model."""
    config = presets.get_config("llava", "tiny-anyres")
    language = text_config(size, config.text_config.vocab_size)
    if language is not None:
        config = presets.get_config("llava", "tiny-anyres", text_config=language)
    processor = presets.get_processor("llava", "tiny-anyres", config)
    torch.manual_seed(seed)
    model = vlmzoo.ZooLlavaForConditionalGeneration(config)
    model.set_attn_implementation(attn_implementation)
    return model, processor


def picture(rng: random.Random, width: int, height: int) -> tuple[PIL.Image.Image, dict]:
    """One shape of one colour on a plain background (``vlmzoo.synthetic``'s painters), at ``width`` x ``height``."""
    shape, color, position = rng.choice(sorted(SHAPE_PAINTERS)), rng.choice(sorted(COLORS)), rng.choice(POSITIONS)
    image = PIL.Image.new("RGB", (width, height), (240, 240, 240))
    x, y = {"left": (0.28, 0.5), "right": (0.72, 0.5), "top": (0.5, 0.28), "bottom": (0.5, 0.72)}[position]
    SHAPE_PAINTERS.get(shape)(PIL.ImageDraw.Draw(image), x * width, y * height, 0.2 * min(width, height), COLORS[color])
    return image, {"shape": shape, "color": color, "position": position}


def make_samples(count: int, seed: int) -> list[dict]:
    """``count`` single-image conversations at mixed resolutions with answers of mixed lengths."""
    rng = random.Random(seed)
    samples = []
    for index in range(count):
        width, height = IMAGE_SIZES[rng.randrange(len(IMAGE_SIZES))]
        image, facts = picture(rng, width, height)
        answer = ANSWERS[rng.randrange(len(ANSWERS))].format(**facts)
        samples.append({"messages": [
            {"role": "user", "content": [{"type": "image", "image": image},
                                         {"type": "text", "text": "Describe the shape in the picture."}]},
            {"role": "assistant", "content": [{"type": "text", "text": answer}]},
        ]})  # fmt: skip
    return samples


def train_step(model, optimizer, batch) -> float:
    optimizer.zero_grad(set_to_none=True)
    loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def measure(model, batches: dict[str, dict], warmup: int, repeats: int) -> dict[str, list[float]]:
    """Seconds of each timed step per side, interleaved (padded/packed, packed/padded, ...) after the warm-up. The
    SGD step has lr 0, so the weights (and each side's work) stay the same from run to run."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    sides = list(batches)
    for _ in range(warmup):
        for side in sides:
            train_step(model, optimizer, batches[side])
    seconds: dict[str, list[float]] = {side: [] for side in sides}
    for round_index in range(repeats):
        for side in sides if round_index % 2 == 0 else reversed(sides):
            start = time.perf_counter()
            train_step(model, optimizer, batches[side])
            seconds[side].append(time.perf_counter() - start)
    return seconds


def format_table(results: list[dict]) -> str:
    rows = [("samples", "real tokens", "padded positions", "padding share", "padded tokens/s", "packed tokens/s",
             "speed-up")]  # fmt: skip
    for r in results:
        rows.append((str(r["batch_size"]), str(r["real_tokens"]), str(r["padded_positions"]),
                     f"{r['padding_share']:.1%}", f"{r['padded_tokens_per_s']:.0f}", f"{r['packed_tokens_per_s']:.0f}",
                     f"{r['speedup']:.2f}x"))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [" | ".join(cell.rjust(width) for cell, width in zip(row, widths)) for row in rows]
    lines.insert(1, "-+-".join("-" * width for width in widths))
    return "\n".join(lines)


def draw_chart(results: list[dict], title: str, path: Path) -> None:
    """Grouped bars: padded and packed tokens/s per batch size, with the padding share and the speed-up above."""
    width, height, margin, bottom = 760, 440, 70, 60
    image = PIL.Image.new("RGB", (width, height), "white")
    draw = PIL.ImageDraw.Draw(image)
    top = max(max(r["padded_tokens_per_s"], r["packed_tokens_per_s"]) for r in results) * 1.15
    plot_height = height - bottom - margin
    axis_y = height - bottom
    draw.line([(margin, margin), (margin, axis_y), (width - 20, axis_y)], fill="black")
    for tick in range(5):
        value = top * tick / 4
        y = axis_y - plot_height * tick / 4
        draw.line([(margin - 4, y), (margin, y)], fill="black")
        draw.text((6, y - 6), f"{value:.0f}", fill="black")
    group = (width - margin - 40) / len(results)
    colors = {"padded": (150, 150, 150), "packed": (40, 110, 200)}
    for index, r in enumerate(results):
        left = margin + 20 + index * group
        for offset, side in enumerate(("padded", "packed")):
            value = r[f"{side}_tokens_per_s"]
            x0 = left + offset * group * 0.38
            draw.rectangle([x0, axis_y - plot_height * value / top, x0 + group * 0.34, axis_y], fill=colors[side])
        draw.text((left, axis_y + 8), f"{r['batch_size']} samples", fill="black")
        draw.text((left, axis_y + 24), f"padding {r['padding_share']:.0%}", fill="black")
        peak = axis_y - plot_height * max(r["padded_tokens_per_s"], r["packed_tokens_per_s"]) / top
        draw.text((left + group * 0.2, peak - 16), f"{r['speedup']:.2f}x", fill="black")
    draw.text((margin, 14), title, fill="black")
    draw.text((margin, 32), "training step tokens/s (real tokens / median step time)", fill="black")
    for offset, side in enumerate(("padded", "packed")):
        x = width - 200 + offset * 90
        draw.rectangle([x, 16, x + 12, 28], fill=colors[side])
        draw.text((x + 16, 16), side, fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def main(argv: list[str] | None = None) -> int:
    (args,) = HfArgumentParser(PackingArguments).parse_args_into_dataclasses(args=argv)
    if args.repeats < 1 or args.warmup < 0 or not args.batch_sizes or min(args.batch_sizes) < 2:
        raise ValueError("--repeats must be >= 1, --warmup >= 0 and every batch size >= 2")
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    load_before = os.getloadavg()
    started = time.perf_counter()
    model, processor = build(args.size, args.attn_implementation, args.seed)
    model.train()
    padded_collator = VLMDataCollator(processor, model=model)
    packed_collator = VLMDataCollator(processor, model=model, packing=True)
    print(f"built llava tiny-anyres '{args.size}': {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M "
          f"parameters, attention {args.attn_implementation}", flush=True)  # fmt: skip

    results = []
    for batch_size in args.batch_sizes:
        samples = make_samples(batch_size, seed=args.seed + batch_size)
        batches = {"padded": padded_collator(samples), "packed": packed_collator(samples)}
        mask = batches["padded"]["attention_mask"]
        real, positions = int(mask.sum()), mask.numel()
        assert batches["packed"]["input_ids"].shape == (1, real)
        with torch.no_grad():  # honesty check: both sides compute the same loss
            torch.manual_seed(0)
            losses = {side: float(model.eval()(**batch).loss) for side, batch in batches.items()}
        model.train()
        if abs(losses["padded"] - losses["packed"]) > LOSS_TOLERANCE:
            raise SystemExit(f"padded and packed losses differ: {losses}; the comparison would not be fair")
        seconds = measure(model, batches, args.warmup, args.repeats)
        medians = {side: statistics.median(times) for side, times in seconds.items()}
        result = {
            "batch_size": batch_size,
            "real_tokens": real,
            "padded_positions": positions,
            "padded_shape": list(mask.shape),
            "padding_share": 1 - real / positions,
            "image_tokens_per_sample": (batches["padded"]["input_ids"] == model.config.image_token_id).sum(1).tolist(),
            "losses": losses,
            "seconds": seconds,
            "padded_tokens_per_s": real / medians["padded"],
            "packed_tokens_per_s": real / medians["packed"],
        }
        result["speedup"] = result["packed_tokens_per_s"] / result["padded_tokens_per_s"]
        results.append(result)
        print(f"{batch_size} samples: padding {result['padding_share']:.1%}, padded {result['padded_tokens_per_s']:.0f} "
              f"tokens/s, packed {result['packed_tokens_per_s']:.0f} tokens/s ({result['speedup']:.2f}x)", flush=True)

    table = format_table(results)
    print("\n" + table)
    output = Path(args.output) if args.output else RESULTS_DIR / "packing.json"
    chart = output.with_suffix(".png")
    draw_chart(results, f"llava tiny-anyres '{args.size}', {args.attn_implementation}, "
                        f"{torch.get_num_threads()} thread(s): packed vs padded", chart)  # fmt: skip
    report = {
        "family": "llava",
        "preset": "tiny-anyres",
        "arguments": asdict(args),
        "text_config": text_config(args.size, model.config.text_config.vocab_size),
        "parameters": sum(p.numel() for p in model.parameters()),
        "results": results,
        "method": {
            "tokens_per_s": "real tokens of the batch (image tokens included, padding excluded) / median seconds of a "
                            "training step: model.train(), forward with the collator's labels, backward, SGD step",
            "padding_share": "padding positions / all positions of the padded batch (right padding)",
            "interleaving": "warm-up runs, then rounds alternating padded/packed and packed/padded",
            "check": f"packed and padded losses of each batch agree within {LOSS_TOLERANCE} before timing",
        },
        "environment": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "vlmzoo": vlmzoo.__version__,
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
            "total_seconds": time.perf_counter() - started,
        },
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {output} and {chart}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
