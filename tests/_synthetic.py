"""A tiny synthetic visual-chat dataset for the training tests (no downloads, fully deterministic).

Each example is one conversation in the chat format that ``vlmzoo.training.VLMDataCollator`` reads (the
format of ``processor.apply_chat_template``, as in LLaVA's instruction-tuning data, Liu et al. 2023):

    {"messages": [
        {"role": "user", "content": [{"type": "image", "image": PIL.Image}, {"type": "text", "text": question}]},
        {"role": "assistant", "content": [{"type": "text", "text": answer}]},
    ]}

The image is a coloured shape on a plain background; the question asks about it and the answer is true of
the picture, so a model could learn it. PIL images are kept in a plain list (``datasets`` would turn them
into dicts): the HF ``Trainer`` takes any sized sequence as ``train_dataset`` when
``remove_unused_columns=False``.
"""

from __future__ import annotations

import random

from PIL import Image, ImageDraw

COLORS = {
    "red": (220, 30, 30),
    "green": (30, 200, 60),
    "blue": (30, 60, 220),
    "yellow": (230, 220, 40),
    "purple": (140, 40, 180),
    "orange": (240, 140, 20),
}
SHAPES = ("circle", "square", "triangle")
SIDES = ("left", "right")

# (height, width) of the pictures: squares, landscapes and portraits so AnyRes picks different grids
DEFAULT_IMAGE_SIZES = ((64, 64), (48, 96), (96, 48), (70, 50), (40, 120), (80, 80))


def draw_shape(shape: str, color: str, side: str, height: int, width: int) -> Image.Image:
    """An RGB ``width`` x ``height`` picture with one ``color`` ``shape`` in its ``side`` half."""
    image = Image.new("RGB", (width, height), (245, 245, 245))
    draw = ImageDraw.Draw(image)
    size = max(4, min(height, width // 2) * 2 // 3)
    left = (width // 4 if side == "left" else 3 * width // 4) - size // 2
    top = height // 2 - size // 2
    box = (left, top, left + size, top + size)
    fill = COLORS[color]
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([(left + size // 2, top), (left, top + size), (left + size, top + size)], fill=fill)
    return image


def _question_answer(rng: random.Random, shape: str, color: str, side: str) -> tuple[str, str]:
    """One question about the picture and its answer; answers of very different lengths on purpose."""
    templates = [
        ("What color is the shape?", color),
        ("What shape is in the image?", f"a {color} {shape}"),
        ("Where is the shape?", f"on the {side}"),
        ("Describe the image.", f"The image shows a {color} {shape} on the {side}. There is one {shape} here."),
    ]
    return templates[rng.randrange(len(templates))]


def conversation(image: Image.Image, question: str, answer: str) -> dict:
    """One user turn (image then question) and one assistant turn, in the collator's format."""
    return {
        "messages": [
            {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": question}]},
            {"role": "assistant", "content": [{"type": "text", "text": answer}]},
        ]
    }


def make_conversations(
    num_examples: int, seed: int = 0, image_sizes: tuple[tuple[int, int], ...] = DEFAULT_IMAGE_SIZES
) -> list[dict]:
    """``num_examples`` single-image conversations; image sizes cycle through ``image_sizes``."""
    if num_examples < 1:
        raise ValueError(f"num_examples must be at least 1, got {num_examples}")
    rng = random.Random(seed)
    examples = []
    for index in range(num_examples):
        shape, color, side = rng.choice(SHAPES), rng.choice(sorted(COLORS)), rng.choice(SIDES)
        height, width = image_sizes[index % len(image_sizes)]
        question, answer = _question_answer(rng, shape, color, side)
        examples.append(conversation(draw_shape(shape, color, side, height, width), question, answer))
    return examples


def reply_texts(example: dict) -> list[str]:
    """The texts of the assistant turns of ``example``, in order."""
    return [
        "".join(part["text"] for part in message["content"] if part["type"] == "text")
        for message in example["messages"]
        if message["role"] == "assistant"
    ]
