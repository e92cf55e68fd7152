"""Synthetic visual question answering: one coloured shape on a plain background, drawn with PIL.

Owns the data of ``vlmzoo demo`` (and of tests and docs that need a small VQA set the model can learn on a
CPU in minutes). Each example is one image with one shape (circle, square, triangle or cross) of one
colour at one position (left, right, top or bottom), and one question whose single-word answer only the
image gives: its colour, its shape or its position. Conversations use the chat-message format of
LLaVA's visual instruction tuning (Liu et al., 2023): a user turn with the image and the question, an
assistant turn with the answer, ready for ``vlmzoo.training.VLMDataCollator``.

Every example is drawn from its own ``random.Random`` seeded by (seed, index), so a seed fixes the whole set
and any example can be drawn alone (``SyntheticVQADataset`` draws them on access, holding nothing).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import PIL.Image
import PIL.ImageDraw
import torch

from .registry import Registry

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (30, 60, 220),
    "yellow": (240, 220, 20),
    "purple": (140, 40, 180),
    "orange": (250, 140, 20),
}

POSITIONS: tuple[str, ...] = ("left", "right", "top", "bottom")

# position -> nominal shape centre as fractions (x, y) of the image side
_POSITION_CENTERS: dict[str, tuple[float, float]] = {
    "left": (0.28, 0.5),
    "right": (0.72, 0.5),
    "top": (0.5, 0.28),
    "bottom": (0.5, 0.72),
}
# shape half-extent, and centre jitter along / across the axis that decides the position (fractions of the
# side); the shape always stays inside the image and at least 0.19 of the side off-centre on its axis
RADIUS_RANGE = (0.17, 0.23)
ALONG_JITTER, ACROSS_JITTER = 0.03, 0.08

# question type -> phrasings (the answer is one word: a colour, a shape or a position)
QUESTIONS: dict[str, tuple[str, ...]] = {
    "color": ("What color is the shape?", "What is the color of the object?"),
    "shape": ("What shape is it?", "Which shape do you see?"),
    "position": ("Where is the shape?", "Where is the object in the image?"),
}

# ----- shapes ---------------------------------------------------------------------------------------
# each painter fills a shape of half-extent `radius` centred at (x, y); the centre pixel is always inside
SHAPE_PAINTERS: Registry[Callable[[PIL.ImageDraw.ImageDraw, float, float, float, tuple], None]] = Registry("shape")


@SHAPE_PAINTERS.register("circle")
def _paint_circle(draw: PIL.ImageDraw.ImageDraw, x: float, y: float, radius: float, fill: tuple) -> None:
    draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=fill)


@SHAPE_PAINTERS.register("square")
def _paint_square(draw: PIL.ImageDraw.ImageDraw, x: float, y: float, radius: float, fill: tuple) -> None:
    draw.rectangle([x - radius, y - radius, x + radius, y + radius], fill=fill)


@SHAPE_PAINTERS.register("triangle")
def _paint_triangle(draw: PIL.ImageDraw.ImageDraw, x: float, y: float, radius: float, fill: tuple) -> None:
    # apex up; the bounding-box centre (x, y) lies inside (the half-width there is radius / 2)
    draw.polygon([(x, y - radius), (x + radius, y + radius), (x - radius, y + radius)], fill=fill)


@SHAPE_PAINTERS.register("cross")
def _paint_cross(draw: PIL.ImageDraw.ImageDraw, x: float, y: float, radius: float, fill: tuple) -> None:
    arm = radius * 0.35  # half-thickness of each bar
    draw.rectangle([x - radius, y - arm, x + radius, y + arm], fill=fill)
    draw.rectangle([x - arm, y - radius, x + arm, y + radius], fill=fill)


SHAPES: tuple[str, ...] = tuple(SHAPE_PAINTERS.keys())

# question type -> the set of possible answers (chance level of a type is 1 / its size)
ANSWER_SETS: dict[str, tuple[str, ...]] = {"color": tuple(COLORS), "shape": SHAPES, "position": POSITIONS}


@dataclass(frozen=True)
class ShapeScene:
    """What one image shows: ``center`` and ``radius`` are in pixels (``radius`` is the half-extent)."""

    shape: str
    color: str
    position: str
    center: tuple[float, float]
    radius: float
    background: tuple[int, int, int]
    image_size: int

    def answer(self, question_type: str) -> str:
        """The one-word answer to a question of ``question_type`` about this scene."""
        if question_type not in ANSWER_SETS:
            raise ValueError(f"unknown question type '{question_type}'; valid types: {sorted(ANSWER_SETS)}")
        return {"color": self.color, "shape": self.shape, "position": self.position}[question_type]


def draw_scene(scene: ShapeScene) -> PIL.Image.Image:
    """Render ``scene`` as an RGB image of ``image_size`` x ``image_size`` pixels (no anti-aliasing)."""
    image = PIL.Image.new("RGB", (scene.image_size, scene.image_size), scene.background)
    x, y = scene.center
    SHAPE_PAINTERS.get(scene.shape)(PIL.ImageDraw.Draw(image), x, y, scene.radius, COLORS[scene.color])
    return image


@dataclass(frozen=True)
class VQAExample:
    """One image, one question about it and its one-word answer."""

    scene: ShapeScene
    image: PIL.Image.Image
    question_type: str
    question: str
    answer: str

    def messages(self, with_answer: bool = True) -> list[dict]:
        """The example as chat messages: user (image + question), then assistant (answer) unless not ``with_answer``."""
        image_part, text_part = {"type": "image", "image": self.image}, {"type": "text", "text": self.question}
        user = {"role": "user", "content": [image_part, text_part]}
        if not with_answer:
            return [user]
        return [user, {"role": "assistant", "content": [{"type": "text", "text": self.answer}]}]


def sample_scene(rng: random.Random, image_size: int = 64) -> ShapeScene:
    """Draw a random scene: uniform shape, colour and position; jittered size, centre and background."""
    if not isinstance(image_size, int) or image_size < 32:
        raise ValueError(f"image_size must be an int >= 32 (shapes need room), got {image_size!r}")
    shape = rng.choice(SHAPES)
    color = rng.choice(tuple(COLORS))
    position = rng.choice(POSITIONS)
    radius = image_size * rng.uniform(*RADIUS_RANGE)
    nominal_x, nominal_y = _POSITION_CENTERS[position]
    along, across = rng.uniform(-ALONG_JITTER, ALONG_JITTER), rng.uniform(-ACROSS_JITTER, ACROSS_JITTER)
    if position in ("left", "right"):
        center = ((nominal_x + along) * image_size, (nominal_y + across) * image_size)
    else:
        center = ((nominal_x + across) * image_size, (nominal_y + along) * image_size)
    gray = rng.randint(215, 255)
    background = (gray, gray, gray)
    return ShapeScene(shape, color, position, center, radius, background, image_size)


def make_example(
    seed: int, index: int, image_size: int = 64, question_types: Sequence[str] = tuple(QUESTIONS)
) -> VQAExample:
    """Example ``index`` of the set of ``seed``.

    Each example has its own ``random.Random`` (seeded by the string ``"seed/index"``), so any example can be
    drawn alone; question types cycle through ``question_types`` with the index, so they stay balanced.
    """
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if not isinstance(index, int) or index < 0:
        raise ValueError(f"index must be a non-negative int, got {index!r}")
    unknown = [kind for kind in question_types if kind not in QUESTIONS]
    if unknown or not question_types:
        valid = sorted(QUESTIONS)
        raise ValueError(f"question_types must be a non-empty subset of {valid}, got {list(question_types)}")
    rng = random.Random(f"{seed}/{index}")
    scene = sample_scene(rng, image_size)
    question_type = question_types[index % len(question_types)]
    question = rng.choice(QUESTIONS[question_type])
    return VQAExample(scene, draw_scene(scene), question_type, question, scene.answer(question_type))


def make_examples(
    num_examples: int,
    seed: int,
    image_size: int = 64,
    question_types: Sequence[str] = tuple(QUESTIONS),
) -> list[VQAExample]:
    """Examples ``0 .. num_examples - 1`` of the set of ``seed`` (see :func:`make_example`)."""
    if not isinstance(num_examples, int) or num_examples < 0:
        raise ValueError(f"num_examples must be a non-negative int, got {num_examples!r}")
    return [make_example(seed, index, image_size, question_types) for index in range(num_examples)]


def chance_accuracy(examples: Sequence[VQAExample]) -> float:
    """Expected exact-match accuracy of guessing uniformly among each question type's possible answers."""
    if not examples:
        raise ValueError("chance_accuracy needs at least one example")
    return sum(1 / len(ANSWER_SETS[example.question_type]) for example in examples) / len(examples)


class SyntheticVQADataset(torch.utils.data.Dataset):
    """``{"messages": [...]}`` items for the HF ``Trainer`` + ``VLMDataCollator``, drawn on access.

    Item ``i`` is ``make_example(seed, i, ...)``: nothing is held in memory, so the set can be as large as
    the number of examples the training run will see (no example repeats, no overfitting).
    """

    def __init__(
        self, num_examples: int, seed: int, image_size: int = 64, question_types: Sequence[str] = tuple(QUESTIONS)
    ):
        if not isinstance(num_examples, int) or num_examples < 1:
            raise ValueError(f"num_examples must be a positive int, got {num_examples!r}")
        make_example(seed, 0, image_size, question_types)  # validates the arguments now, not in the data loader
        self.num_examples, self.seed = num_examples, seed
        self.image_size, self.question_types = image_size, tuple(question_types)

    def __len__(self) -> int:
        return self.num_examples

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.num_examples:
            raise IndexError(f"index {index} out of range for {self.num_examples} examples")
        example = make_example(self.seed, index, self.image_size, self.question_types)
        return {"messages": example.messages(with_answer=True)}


__all__ = [
    "ANSWER_SETS",
    "COLORS",
    "POSITIONS",
    "QUESTIONS",
    "SHAPES",
    "SyntheticVQADataset",
    "ShapeScene",
    "VQAExample",
    "chance_accuracy",
    "draw_scene",
    "make_example",
    "make_examples",
    "sample_scene",
]
