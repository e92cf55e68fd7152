"""``vlmzoo demo``: train a tiny LLaVA on synthetic visual questions on a CPU in a few minutes.

Follows the two-stage recipe of LLaVA (Liu et al., "Visual Instruction Tuning", 2023; LLaVA-1.5, 2023):
stage 1 "align" trains only the projector with a high learning rate, stage 2 "instruct" trains the
projector and the language model; the vision tower stays frozen throughout. Both stages run with the
Hugging Face ``Trainer`` and ``vlmzoo.training.VLMDataCollator``. The data are single-shape images from
``vlmzoo.synthetic`` with questions only the image answers (colour, shape, position). The demo prints the
held-out accuracy before training, after each stage and the chance level, saves the model and processor,
reloads them with ``AutoModelForImageTextToText`` / ``AutoProcessor`` and answers questions about a
freshly drawn image.

Owns: the demo's arguments (``DemoArguments``, parsed with ``HfArgumentParser``), the evaluation by greedy
generation (``evaluate_accuracy``), ``run_demo`` (returns the models and numbers, for tests) and ``main``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from transformers import HfArgumentParser, Trainer, TrainingArguments, set_seed

from .synthetic import SyntheticVQADataset, VQAExample, chance_accuracy, draw_scene, make_example, make_examples
from .training import VLMDataCollator

PRESET = "tiny"


@dataclass
class DemoArguments:
    """Arguments of ``vlmzoo demo`` (each is also a ``--flag``)."""

    family: str = field(default="llava", metadata={"help": "model family (vlmzoo.FAMILIES key); preset 'tiny'"})
    output_dir: str = field(default="./demo_output", metadata={"help": "where the trained model + processor go"})
    seed: int = field(default=0, metadata={"help": "seed of the data, the initial weights and the training order"})
    num_train: int = field(default=6000, metadata={"help": "training examples (image + question + answer)"})
    num_eval: int = field(default=300, metadata={"help": "held-out examples for the accuracy"})
    stage1_steps: int = field(default=150, metadata={"help": "optimizer steps of stage 1 (align: projector only)"})
    stage2_steps: int = field(default=900, metadata={"help": "optimizer steps of stage 2 (instruct: projector + LM)"})
    batch_size: int = field(default=32, metadata={"help": "training batch size"})
    stage1_learning_rate: float = field(default=2e-3, metadata={"help": "peak learning rate of stage 1"})
    stage2_learning_rate: float = field(default=1e-3, metadata={"help": "peak learning rate of stage 2"})
    num_threads: int = field(
        default=1, metadata={"help": "torch CPU threads; 1 is fastest for a model this small (no thread sync)"}
    )
    quick: bool = field(default=False, metadata={"help": "tiny smoke run (a few steps; accuracy stays low)"})

    def __post_init__(self):
        if self.quick:
            self.num_train, self.num_eval = min(self.num_train, 64), min(self.num_eval, 24)
            self.stage1_steps, self.stage2_steps = min(self.stage1_steps, 4), min(self.stage2_steps, 12)
            self.batch_size = min(self.batch_size, 8)
        for name in ("num_train", "num_eval", "batch_size", "num_threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("stage1_steps", "stage2_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")


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
def build_demo_model(family: str):
    """The ``tiny`` preset of ``family`` and its processor, with freshly initialised weights."""
    from .auto import get_family
    from .presets import get_config, get_processor

    config = get_config(family, PRESET)
    processor = get_processor(family, PRESET, config)
    model = get_family(family).for_generation_class(config)
    return model, processor


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
        # (batch, prompt + new tokens) -> the new tokens only
        answers.extend(tokenizer.batch_decode(generated[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True))
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
    model, processor, dataset: SyntheticVQADataset, stage: str, steps: int, learning_rate: float, args: DemoArguments, work_dir: str
) -> StageReport:
    """Freeze/unfreeze for ``stage`` and run the HF ``Trainer`` for ``steps`` optimizer steps."""
    trainable = model.set_training_stage(stage)
    for component, parts in model.stage_component_modules().items():
        total = sum(p.numel() for p in _unique_parameters(parts))
        print(f"    {component:<22} {'trainable' if trainable[component] else 'frozen':<9} {total:>9,d} params")
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
        dataloader_num_workers=0,
        seed=args.seed,
        data_seed=args.seed,
    )
    trainer = Trainer(
        model=model, args=training_args, train_dataset=dataset, data_collator=VLMDataCollator(processor)
    )
    started = time.perf_counter()
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return StageReport(stage, trainable, losses, time.perf_counter() - started)


def _unique_parameters(parts) -> list[torch.nn.Parameter]:
    """Parameters of a component's modules / loose parameters, each once."""
    found: dict[int, torch.nn.Parameter] = {}
    for part in parts:
        if isinstance(part, torch.nn.Parameter):
            found[id(part)] = part
        elif part is not None:
            found.update((id(parameter), parameter) for parameter in part.parameters())
    return list(found.values())


@contextlib.contextmanager
def _quiet_processor_kwargs_warning():
    """Hide transformers' per-batch "Kwargs passed to `processor.__call__` ..." warning while training.

    ``VLMDataCollator`` passes ``padding``/``padding_side`` as loose kwargs to ``apply_chat_template``; the
    warning would print once per batch. Remove this filter once the collator passes ``processor_kwargs``.
    """

    class _Filter(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "have to be in `processor_kwargs`" not in record.getMessage()

    log = logging.getLogger("transformers.processing_utils")
    quiet = _Filter()
    log.addFilter(quiet)
    try:
        yield
    finally:
        log.removeFilter(quiet)


# ----- the demo -------------------------------------------------------------------------------------
def run_demo(args: DemoArguments) -> DemoResult:
    """Build, evaluate, train (align, instruct), evaluate, save, reload and ask; print as it goes."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    import vlmzoo  # noqa: F401  (registers the vlmzoo families with the Auto classes)

    started = time.perf_counter()
    torch.set_num_threads(args.num_threads)
    set_seed(args.seed)
    model, processor = build_demo_model(args.family)
    image_size = model.config.vision_config.image_size
    eval_examples = make_examples(args.num_eval, seed=args.seed + 1, image_size=image_size)
    chance = chance_accuracy(eval_examples)

    parameters = sum(p.numel() for p in model.parameters())
    print(f"vlmzoo demo: a tiny {type(model).__name__} ({parameters:,d} parameters, random init) learns to answer")
    print(f"questions about synthetic images: {args.num_train} training / {args.num_eval} held-out examples.")
    print(f"e.g. Q: {eval_examples[0].question}  A: {eval_examples[0].answer}")
    print(f"chance level (uniform guess per question type): {chance:.1%}\n")

    accuracies = {"before training": evaluate_accuracy(model, processor, eval_examples)}
    print(format_accuracy("before training", accuracies["before training"]))

    stages = []
    dataset = SyntheticVQADataset(args.num_train, seed=args.seed, image_size=image_size)
    plan = [
        ("align", args.stage1_steps, args.stage1_learning_rate, "after stage 1", "projector only"),
        ("instruct", args.stage2_steps, args.stage2_learning_rate, "after stage 2", "projector + language model"),
    ]
    with tempfile.TemporaryDirectory() as work_dir, _quiet_processor_kwargs_warning():
        for number, (stage, steps, learning_rate, label, what) in enumerate(plan, start=1):
            print(f"\nstage {number} '{stage}' ({what}): {steps} steps, batch {args.batch_size}, lr {learning_rate:g}")
            report = train_stage(model, processor, dataset, stage, steps, learning_rate, args, work_dir)
            stages.append(report)
            if report.losses:
                print(f"    loss {report.losses[0]:.3f} -> {report.losses[-1]:.3f} in {report.seconds:.0f} s")
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
    print(f"\nsaved to {args.output_dir}; reloaded as {type(reloaded_model).__name__} + {type(reloaded_processor).__name__}")

    # a scene from a split neither training (seed) nor evaluation (seed + 1) uses
    fresh_scene = make_example(args.seed + 2, 0, image_size).scene
    fresh_image = draw_scene(fresh_scene)
    fresh_image.save(os.path.join(args.output_dir, "fresh_example.png"))
    fresh_examples = [
        VQAExample(fresh_scene, fresh_image, kind, question, fresh_scene.answer(kind))
        for kind, question in (
            ("color", "What color is the shape?"),
            ("shape", "What shape is it?"),
            ("position", "Where is the shape?"),
        )
    ]
    replies = generate_answers(reloaded_model, reloaded_processor, fresh_examples)
    print(f"a freshly drawn image ({os.path.join(args.output_dir, 'fresh_example.png')}):")
    fresh_answers = []
    for example, reply in zip(fresh_examples, replies):
        fresh_answers.append((example.question, example.answer, reply.strip()))
        mark = "ok" if first_word(reply) == example.answer else "wrong"
        print(f"  Q: {example.question:<26} true answer: {example.answer:<8} model: {reply.strip():<10} [{mark}]")

    seconds = time.perf_counter() - started
    print(f"\ndone in {seconds:.0f} s")
    return DemoResult(
        model, processor, reloaded_model, reloaded_processor, accuracies, chance, stages, fresh_answers, seconds
    )


def parse_args(argv: Sequence[str] | None = None) -> DemoArguments:
    (args,) = HfArgumentParser(DemoArguments).parse_args_into_dataclasses(args=list(argv or []))
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``vlmzoo demo``; returns the exit code (1 when a full run ends at or below chance)."""
    args = parse_args(argv)
    result = run_demo(args)
    final = result.accuracies["after stage 2"]["overall"]
    if not args.quick and final <= result.chance:
        print(f"the model did not learn: {final:.1%} is not above chance ({result.chance:.1%})")
        return 1
    return 0


__all__ = ["DemoArguments", "DemoResult", "evaluate_accuracy", "first_word", "main", "parse_args", "run_demo"]
