"""``vlmzoo demo``: train a tiny LLaVA on synthetic visual questions on a CPU in a few minutes.

Follows the two-stage recipe of LLaVA (Liu et al., "Visual Instruction Tuning", 2023; LLaVA-1.5, 2023):
stage 1 "align" trains only the projector with a high learning rate, stage 2 "instruct" trains the
projector and the language model; the vision tower stays frozen throughout. Both stages run with the
Hugging Face ``Trainer`` and ``vlmzoo.training.VLMDataCollator``. The data are single-shape images from
``vlmzoo.synthetic`` with questions only the image answers (colour, shape, position). The demo prints the
held-out accuracy before training, after each stage and the chance level, saves the model and processor,
reloads them with ``AutoModelForImageTextToText`` / ``AutoProcessor`` and answers questions about a
freshly drawn image. The model is the family's ``tiny`` preset (or another offline preset, ``--preset``),
with the changes the family's config declares for the demo (``ZooVLMConfig.demo_overrides``: e.g. a wider
vision tower), whose reason is printed. The default family is the family table's first.

Owns: the demo's arguments (``DemoArguments``, parsed with ``HfArgumentParser``; every one is checked before any
training, ``--output-dir`` by ``check_output_dir``, and a mistake is a one-line ``ValueError``), the evaluation by
greedy generation (``evaluate_accuracy``), ``run_demo`` (returns the models and numbers, for tests) and ``main``.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    HfArgumentParser,
    Trainer,
    TrainingArguments,
    set_seed,
)

from .auto import default_family, get_family
from .conversion_scripts.errors import describe_os_error
from .presets import get_config, get_processor, preset_names
from .synthetic import (
    QUESTIONS,
    SyntheticVQADataset,
    VQAExample,
    chance_accuracy,
    draw_scene,
    make_example,
    make_examples,
)
from .training import VLMDataCollator

PRESET = "tiny"
PROG = "vlmzoo demo"


def check_output_dir(path: str) -> None:
    """``ValueError`` unless the demo can write ``--output-dir``: not empty, not a file, and its nearest existing
    ancestor a directory where a directory can be made (probed with a temporary one, removed at once). Checked
    with the other arguments, so a bad path costs no training."""
    if not str(path).strip():
        raise ValueError("--output-dir is empty; name the directory for the trained model, e.g. --output-dir demo_output")
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise ValueError(f"--output-dir '{path}' is an existing file, not a directory")
    ancestor = target.absolute()
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ValueError(f"--output-dir '{path}' cannot be created: '{ancestor}' is a file, not a directory")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".vlmzoo-demo-write-test-", dir=ancestor))
    except OSError as error:
        raise ValueError(f"--output-dir '{path}' cannot be written: {describe_os_error(error)} in '{ancestor}'") from None


@dataclass
class DemoArguments:
    """Arguments of ``vlmzoo demo`` (each is also a ``--flag``)."""

    family: str = field(
        default_factory=default_family,
        metadata={"help": "model family (a vlmzoo.FAMILIES key; default: the family table's first)"},
    )
    preset: str = field(
        default="tiny", metadata={"help": "the family's offline preset: tiny, or another tiny-... one it declares"}
    )
    output_dir: str = field(default="./demo_output", metadata={"help": "where the trained model + processor go"})
    seed: int = field(default=0, metadata={"help": "seed of the data, the initial weights and the training order"})
    num_train: int = field(
        default=0,
        metadata={"help": "training examples (image + question + answer); 0: as many as the longer stage draws"},
    )
    num_eval: int = field(default=300, metadata={"help": "held-out examples for the accuracy"})
    stage1_steps: int = field(default=150, metadata={"help": "optimizer steps of stage 1 (the family's align stage)"})
    stage2_steps: int = field(default=1500, metadata={"help": "optimizer steps of stage 2 (the family's instruct stage)"})
    batch_size: int = field(default=32, metadata={"help": "training batch size"})
    stage1_learning_rate: float = field(default=2e-3, metadata={"help": "peak learning rate of stage 1"})
    stage2_learning_rate: float = field(default=1e-3, metadata={"help": "peak learning rate of stage 2"})
    num_threads: int = field(
        default=1, metadata={"help": "torch CPU threads; 1 is fastest for a model this small (no thread sync)"}
    )
    dataloader_workers: int = field(
        default=1, metadata={"help": "processes that collate batches while the model trains (0: collate inline)"}
    )
    quick: bool = field(default=False, metadata={"help": "tiny smoke run (a few steps; accuracy stays low)"})

    def __post_init__(self):
        minimums = {"num_eval": 1, "batch_size": 1, "num_threads": 1, "dataloader_workers": 0}
        minimums.update(num_train=0, stage1_steps=0, stage2_steps=0)
        for name, minimum in minimums.items():
            if getattr(self, name) < minimum:
                raise ValueError(f"--{name.replace('_', '-')} must be >= {minimum}, got {getattr(self, name)}")
        get_family(self.family)  # ValueError naming the registered families
        offline = [name for name in preset_names(self.family) if name.startswith("tiny")]
        if self.preset not in offline:
            raise ValueError(f"--preset {self.preset!r}: family '{self.family}' has the offline presets {offline}")
        check_output_dir(self.output_dir)
        if self.quick:
            self.num_eval = min(self.num_eval, 24)
            self.stage1_steps, self.stage2_steps = min(self.stage1_steps, 4), min(self.stage2_steps, 12)
            self.batch_size = min(self.batch_size, 8)
        if self.num_train == 0:
            self.num_train = max(self.stage1_steps, self.stage2_steps, 1) * self.batch_size


@dataclass
class StageReport:
    """What one training stage did: trainable parameters per component and the logged losses."""

    name: str
    trainable: dict[str, int]
    losses: list[float]
    seconds: float


@dataclass
class DemoResult:
    """Everything ``run_demo`` produced (the tests read it)."""

    model: torch.nn.Module
    processor: object
    reloaded_model: torch.nn.Module
    reloaded_processor: object
    accuracies: dict[str, dict[str, float]]  # "before" / "after stage 1" / "after stage 2" -> type -> accuracy
    chance: float
    stages: list[StageReport]
    fresh_answers: list[tuple[str, str, str]]  # (question, true answer, model's answer)
    seconds: float


# ----- model ----------------------------------------------------------------------------------------
def build_demo_model(family: str, preset: str = PRESET):
    """The ``preset`` of ``family`` with the demo's changes (its config's ``demo_overrides``), its processor, and
    what was changed and why (printed).

    The model's weights are freshly initialised from the current torch seed.
    """
    config = get_config(family, preset)
    overrides, why = config.demo_overrides()
    if overrides:
        config = get_config(family, preset, **overrides)
    processor = get_processor(family, preset, config)
    model = get_family(family).for_generation_class(config)
    return model, processor, why or "as is"


# ----- evaluation -----------------------------------------------------------------------------------
def first_word(text: str) -> str:
    """The first word of a generated answer, lower-cased, without surrounding punctuation."""
    words = text.strip().split()
    return words[0].strip(".,;:!?\"'()").lower() if words else ""


@torch.no_grad()
def generate_answers(model, processor, examples: Sequence[VQAExample], batch_size: int = 64, max_new_tokens: int = 4):
    """Greedy answers (decoded text) of ``model`` to the examples' questions."""
    tokenizer = processor.tokenizer
    was_training = model.training
    model.eval()
    answers: list[str] = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        inputs = processor.apply_chat_template(
            [example.messages(with_answer=False) for example in chunk],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            processor_kwargs={"padding": True, "padding_side": "left"},
        )
        generated = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        # (batch, prompt + new tokens) -> the new tokens only; an encoder-decoder returns (start token + new tokens)
        prefix = 1 if model.config.is_encoder_decoder else inputs["input_ids"].shape[1]
        answers.extend(tokenizer.batch_decode(generated[:, prefix:], skip_special_tokens=True))
    model.train(was_training)
    return answers


def evaluate_accuracy(model, processor, examples: Sequence[VQAExample]) -> dict[str, float]:
    """Exact-match accuracy of the first generated word, per question type and ``"overall"``."""
    if not examples:
        raise ValueError("evaluate_accuracy needs at least one example")
    predictions = generate_answers(model, processor, examples)
    hits: dict[str, list[bool]] = defaultdict(list)
    for example, prediction in zip(examples, predictions):
        hit = first_word(prediction) == example.answer
        hits[example.question_type].append(hit)
        hits["overall"].append(hit)
    return {kind: sum(values) / len(values) for kind, values in hits.items()}


def format_accuracy(label: str, accuracy: dict[str, float]) -> str:
    per_type = "  ".join(f"{kind} {value:6.1%}" for kind, value in accuracy.items() if kind != "overall")
    return f"  {label:<16} overall {accuracy['overall']:6.1%}   ({per_type})"


# ----- training -------------------------------------------------------------------------------------
def train_stage(
    model,
    processor,
    dataset: SyntheticVQADataset,
    stage: str,
    steps: int,
    learning_rate: float,
    args: DemoArguments,
    work_dir: str,
) -> StageReport:
    """Freeze/unfreeze for ``stage`` and run the HF ``Trainer`` for ``steps`` optimizer steps."""
    trainable = model.set_training_stage(stage)  # logs one line per component
    if steps == 0:
        return StageReport(stage, trainable, [], 0.0)
    training_args = TrainingArguments(
        output_dir=os.path.join(work_dir, stage),
        max_steps=steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,
        weight_decay=0.0,
        logging_steps=1 if args.quick else max(1, steps // 10),
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        remove_unused_columns=False,
        disable_tqdm=False,
        dataloader_num_workers=args.dataloader_workers,
        seed=args.seed,
        data_seed=args.seed,
    )
    collator = VLMDataCollator(processor, model=model)
    trainer = Trainer(model=model, args=training_args, train_dataset=dataset, data_collator=collator)
    started = time.perf_counter()
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return StageReport(stage, trainable, losses, time.perf_counter() - started)


# ----- the demo -------------------------------------------------------------------------------------
def run_demo(args: DemoArguments) -> DemoResult:
    """Build, evaluate, train (align, instruct), evaluate, save, reload and ask; print as it goes."""
    threads_before = torch.get_num_threads()
    torch.set_num_threads(args.num_threads)
    try:
        return _run_demo(args)
    finally:
        torch.set_num_threads(threads_before)


def _run_demo(args: DemoArguments) -> DemoResult:
    started = time.perf_counter()
    set_seed(args.seed)
    model, processor, size_note = build_demo_model(args.family, args.preset)
    image_size = model.config.demo_image_size()
    eval_examples = make_examples(args.num_eval, seed=args.seed + 1, image_size=image_size)
    chance = chance_accuracy(eval_examples)

    parameters = sum(p.numel() for p in model.parameters())
    print(f"vlmzoo demo: a tiny {type(model).__name__} ({parameters:,d} parameters, random init) learns to answer")
    print(f"questions about synthetic images: {args.num_train} training / {args.num_eval} held-out examples.")
    print(f"model: preset '{args.preset}' of family '{args.family}' {size_note}")
    print(f"e.g. Q: {eval_examples[0].question}  A: {eval_examples[0].answer}")
    stage_parts = {stage: " + ".join(model.config.training_stages[stage]) for stage in ("align", "instruct")}
    print(f"training follows the {args.family} recipe: stage 1 aligns ({stage_parts['align']}), stage 2 "
          f"instruction-tunes\n({stage_parts['instruct']}); every other component stays frozen.")
    print(f"chance level (uniform guess per question type): {chance:.1%}\n")

    accuracies = {"before training": evaluate_accuracy(model, processor, eval_examples)}
    print(format_accuracy("before training", accuracies["before training"]))

    stages = []
    dataset = SyntheticVQADataset(args.num_train, seed=args.seed, image_size=image_size)
    plan = [
        ("align", args.stage1_steps, args.stage1_learning_rate, "after stage 1", stage_parts["align"], ""),
        (
            "instruct",
            args.stage2_steps,
            args.stage2_learning_rate,
            "after stage 2",
            stage_parts["instruct"],
            "\n    (the papers tune pretrained models at ~1e-5; this tiny model starts from random weights)",
        ),
    ]
    with tempfile.TemporaryDirectory() as work_dir:
        for number, (stage, steps, learning_rate, label, what, note) in enumerate(plan, start=1):
            schedule = f"{steps} steps, batch {args.batch_size}, lr {learning_rate:g}"
            print(f"\nstage {number} '{stage}' ({what}): {schedule}{note}")
            report = train_stage(model, processor, dataset, stage, steps, learning_rate, args, work_dir)
            stages.append(report)
            if report.losses:
                print(f"    loss {report.losses[0]:.3f} -> {report.losses[-1]:.3f} in {report.seconds:.0f} s")
            if stage == "align":
                print("    (the loss barely moves: the projector aligns to a random LM here, the papers' is pretrained)")
            accuracies[label] = evaluate_accuracy(model, processor, eval_examples)
            print(format_accuracy(label, accuracies[label]))

    print(f"\nheld-out accuracy (chance {chance:.1%}):")
    for label, accuracy in accuracies.items():
        print(format_accuracy(label, accuracy))

    os.makedirs(args.output_dir, exist_ok=True)
    model.save_pretrained(args.output_dir)
    processor.save_pretrained(args.output_dir)
    reloaded_model = AutoModelForImageTextToText.from_pretrained(args.output_dir)
    reloaded_processor = AutoProcessor.from_pretrained(args.output_dir)
    reloaded = f"{type(reloaded_model).__name__} + {type(reloaded_processor).__name__}"
    print(f"\nsaved to {args.output_dir}; reloaded with the Auto classes as {reloaded}")

    # a scene from a split neither training (seed) nor evaluation (seed + 1) uses
    fresh_scene = make_example(args.seed + 2, 0, image_size).scene
    fresh_image = draw_scene(fresh_scene)
    fresh_path = os.path.join(args.output_dir, "fresh_example.png")
    fresh_image.save(fresh_path)
    fresh_examples = [
        VQAExample(fresh_scene, fresh_image, kind, phrasings[0], fresh_scene.answer(kind))
        for kind, phrasings in QUESTIONS.items()
    ]
    replies = generate_answers(reloaded_model, reloaded_processor, fresh_examples)
    print(f"the reloaded model answers about a freshly drawn image ({fresh_path}):")
    fresh_answers = []
    for example, reply in zip(fresh_examples, replies):
        fresh_answers.append((example.question, example.answer, reply.strip()))
        mark = "ok" if first_word(reply) == example.answer else "wrong"
        print(f"  Q: {example.question:<26} true answer: {example.answer:<9} model: {reply.strip():<9} [{mark}]")

    seconds = time.perf_counter() - started
    print(f"\ndone in {seconds:.0f} s")
    return DemoResult(
        model, processor, reloaded_model, reloaded_processor, accuracies, chance, stages, fresh_answers, seconds
    )


def parse_args(argv: Sequence[str] | None = None) -> DemoArguments:
    """``DemoArguments`` from command-line flags (``None`` or ``[]``: all defaults); every mistake (an unknown
    flag, a bad value, an ``--output-dir`` that cannot be written) is a one-line ``ValueError``."""
    from .cli import raise_parser_errors

    parser = HfArgumentParser(DemoArguments, prog=PROG)
    raise_parser_errors(parser, PROG, ValueError)
    namespace = parser.parse_args(list(argv or []))
    return DemoArguments(**{f.name: getattr(namespace, f.name) for f in dataclasses.fields(DemoArguments)})


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``vlmzoo demo``; returns the exit code (1 when a full run ends at or below chance)."""
    return run_parsed(parse_args(argv))


def run_parsed(args: DemoArguments) -> int:
    """Run the demo with parsed arguments; returns the exit code of :func:`main`."""
    result = run_demo(args)
    final = result.accuracies["after stage 2"]["overall"]
    if not args.quick and final <= result.chance:
        print(f"the model did not learn: {final:.1%} is not above chance ({result.chance:.1%})")
        return 1
    return 0


__all__ = [
    "DemoArguments",
    "DemoResult",
    "check_output_dir",
    "evaluate_accuracy",
    "first_word",
    "main",
    "parse_args",
    "run_demo",
    "run_parsed",
]
