"""Tests of ``vlmzoo demo`` (its ``--quick`` mode end to end) and of the synthetic VQA generator.

The generator's answers are checked against the drawn pixels with checks written here (hue of the centre
pixel, centroid of the foreground, a corner/fill-ratio shape classifier), not with the generator's tables.
"""

from __future__ import annotations

import colorsys
import json

import numpy as np
import pytest
import torch

from vlmzoo import demo
from vlmzoo.synthetic import (
    ANSWER_SETS,
    QUESTIONS,
    SyntheticVQADataset,
    chance_accuracy,
    make_example,
    make_examples,
)

NUM_CHECKED = 200


@pytest.fixture(scope="module")
def examples():
    return make_examples(NUM_CHECKED, seed=11)


def _foreground_mask(image) -> np.ndarray:
    pixels = np.asarray(image).astype(int)  # (H, W, 3)
    background = pixels[0, 0]  # shapes never touch the corners
    return np.abs(pixels - background).sum(-1) > 0


# ----- the generator -----------------------------------------------------------------------------------
# hue ranges in degrees, chosen by eye for each colour name (red wraps around 0)
HUE_RANGES = {
    "red": [(345, 360), (0, 10)],
    "orange": [(20, 40)],
    "yellow": [(45, 65)],
    "green": [(95, 145)],
    "blue": [(200, 245)],
    "purple": [(260, 300)],
}


def test_color_answer_is_the_hue_at_the_shape_centre(examples):
    assert set(HUE_RANGES) == set(ANSWER_SETS["color"])
    for example in examples:
        x, y = example.scene.center
        red, green, blue = example.image.getpixel((int(x), int(y)))
        hue, saturation, _ = colorsys.rgb_to_hsv(red / 255, green / 255, blue / 255)
        assert saturation > 0.6, f"centre pixel {red, green, blue} of a {example.scene.color} shape is not saturated"
        degrees = hue * 360
        assert any(low <= degrees <= high for low, high in HUE_RANGES[example.scene.color]), (
            f"{example.scene.color} shape has centre hue {degrees:.0f} deg"
        )


def test_position_answer_matches_the_foreground_centroid(examples):
    for example in examples:
        mask = _foreground_mask(example.image)
        rows, columns = np.nonzero(mask)
        height, width = mask.shape
        dx, dy = columns.mean() - (width - 1) / 2, rows.mean() - (height - 1) / 2
        if abs(dx) > abs(dy):
            seen = "left" if dx < 0 else "right"
        else:
            seen = "top" if dy < 0 else "bottom"
        assert seen == example.scene.position, f"centroid offset ({dx:.1f}, {dy:.1f}), answer {example.scene.position}"
        assert max(abs(dx), abs(dy)) > width * 0.08, "the shape is too close to the centre to have a clear position"


def _classify_shape(mask: np.ndarray) -> str:
    """Tell the four shapes apart from their bounding box: which corners are filled, and the fill ratio."""
    rows, columns = np.nonzero(mask)
    box = mask[rows.min() : rows.max() + 1, columns.min() : columns.max() + 1]
    top_filled = box[0, 0] and box[0, -1]
    bottom_filled = box[-1, 0] and box[-1, -1]
    if top_filled and bottom_filled:
        return "square"
    if bottom_filled:
        return "triangle"
    return "circle" if box.mean() > 0.7 else "cross"


def test_shape_answer_matches_the_drawn_outline(examples):
    for example in examples:
        assert _classify_shape(_foreground_mask(example.image)) == example.scene.shape


def test_answers_and_question_types_are_consistent_and_balanced(examples):
    counts = {kind: 0 for kind in QUESTIONS}
    for example in examples:
        counts[example.question_type] += 1
        assert example.question in QUESTIONS[example.question_type]
        expected = {"color": example.scene.color, "shape": example.scene.shape, "position": example.scene.position}
        assert example.answer == expected[example.question_type]
        assert len(example.answer.split()) == 1
    assert max(counts.values()) - min(counts.values()) <= 1
    # every shape, colour and position occurs
    assert {e.scene.shape for e in examples} == set(ANSWER_SETS["shape"])
    assert {e.scene.color for e in examples} == set(ANSWER_SETS["color"])
    assert {e.scene.position for e in examples} == set(ANSWER_SETS["position"])


def test_generator_is_deterministic_given_the_seed():
    first, again, other = make_examples(30, seed=5), make_examples(30, seed=5), make_examples(30, seed=6)
    assert [e.scene for e in first] == [e.scene for e in again]
    assert all(np.array_equal(np.asarray(a.image), np.asarray(b.image)) for a, b in zip(first, again))
    assert [e.question for e in first] == [e.question for e in again]
    assert [e.scene for e in first] != [e.scene for e in other]


def test_any_example_can_be_drawn_alone_and_the_dataset_draws_the_same():
    examples = make_examples(7, seed=4)
    alone = make_example(4, 5)
    assert alone.scene == examples[5].scene and alone.question == examples[5].question
    dataset = SyntheticVQADataset(7, seed=4)
    assert len(dataset) == 7
    item = dataset[5]["messages"]
    assert item[0]["content"][1]["text"] == examples[5].question
    assert item[1]["content"][0]["text"] == examples[5].answer
    assert np.array_equal(np.asarray(item[0]["content"][0]["image"]), np.asarray(examples[5].image))
    with pytest.raises(IndexError, match="7"):
        dataset[7]


def test_chance_level_averages_one_over_the_number_of_answers():
    # 6 colours, 4 shapes, 4 positions, types in equal shares: (1/6 + 1/4 + 1/4) / 3
    assert chance_accuracy(make_examples(30, seed=0)) == pytest.approx((1 / 6 + 1 / 4 + 1 / 4) / 3)


def test_generator_rejects_bad_arguments():
    with pytest.raises(ValueError, match="question_types"):
        make_examples(3, seed=0, question_types=("count",))
    with pytest.raises(ValueError, match="image_size"):
        make_examples(3, seed=0, image_size=8)
    with pytest.raises(ValueError, match="num_examples"):
        make_examples(-1, seed=0)
    with pytest.raises(TypeError, match="seed"):
        make_examples(2, seed="zero")
    with pytest.raises(ValueError, match="num_examples"):
        SyntheticVQADataset(0, seed=0)


def test_messages_follow_the_chat_format(examples):
    example = examples[0]
    user, assistant = example.messages()
    assert user["role"] == "user" and assistant["role"] == "assistant"
    assert user["content"][0] == {"type": "image", "image": example.image}
    assert user["content"][1] == {"type": "text", "text": example.question}
    assert assistant["content"] == [{"type": "text", "text": example.answer}]
    assert example.messages(with_answer=False) == [user]


# ----- the demo ----------------------------------------------------------------------------------------
def test_arguments_parse_and_quick_shrinks_the_run():
    args = demo.parse_args(["--quick", "--seed", "3", "--output-dir", "somewhere"])
    assert args.quick and args.seed == 3 and args.output_dir == "somewhere"
    full = demo.parse_args([])
    assert args.num_train < full.num_train and args.stage2_steps < full.stage2_steps
    assert full.num_train == full.stage2_steps * full.batch_size  # 0 means: as many as stage 2 draws
    with pytest.raises(ValueError, match="num-train"):
        demo.parse_args(["--num-train", "-5"])
    with pytest.raises(ValueError, match="batch-size"):
        demo.parse_args(["--batch-size", "0"])
    with pytest.raises(ValueError, match="no_such_family"):
        demo.parse_args(["--family", "no_such_family"])


@pytest.mark.parametrize(
    ("generated", "word"), [(" red", "red"), ("Circle.", "circle"), (" left side", "left"), ("", ""), ("  ", "")]
)
def test_first_word_of_a_generated_answer(generated, word):
    assert demo.first_word(generated) == word


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("demo_output")
    return demo.run_demo(demo.parse_args(["--quick", "--output-dir", str(output_dir), "--seed", "0"])), output_dir


def test_quick_run_trains_both_stages_and_lowers_the_loss(quick_run):
    result, _ = quick_run
    align, instruct = result.stages
    assert (align.name, instruct.name) == ("align", "instruct")
    # stage 1 trains only the projector, stage 2 the projector and the language model
    assert align.trainable["vision_tower"] == 0 and align.trainable["language_model"] == 0
    assert align.trainable["multi_modal_projector"] > 0
    assert instruct.trainable["language_model"] > 0 and instruct.trainable["vision_tower"] == 0
    assert len(instruct.losses) >= 6
    assert np.mean(instruct.losses[-3:]) < np.mean(instruct.losses[:3]) - 0.2
    assert instruct.losses[-1] < align.losses[0]
    assert set(result.accuracies) == {"before training", "after stage 1", "after stage 2"}


def test_saved_model_reloads_with_auto_classes_and_gives_the_same_logits(quick_run):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    result, output_dir = quick_run
    config = json.loads((output_dir / "config.json").read_text())
    assert config["model_type"] == "vlmzoo_llava"
    assert (output_dir / "fresh_example.png").exists()

    model = AutoModelForImageTextToText.from_pretrained(output_dir).eval()
    processor = AutoProcessor.from_pretrained(output_dir)
    assert type(model) is type(result.model) and type(processor) is type(result.processor)
    conversations = [example.messages() for example in make_examples(4, seed=99)]
    inputs = processor.apply_chat_template(conversations, tokenize=True, return_dict=True, return_tensors="pt",
                                           processor_kwargs={"padding": True})
    original_inputs = result.processor.apply_chat_template(conversations, tokenize=True, return_dict=True,
                                                           return_tensors="pt", processor_kwargs={"padding": True})
    assert torch.equal(inputs["input_ids"], original_inputs["input_ids"])
    assert torch.equal(inputs["pixel_values"], original_inputs["pixel_values"])
    result.model.eval()
    with torch.no_grad():
        reloaded_logits = model(**inputs).logits
        original_logits = result.model(**inputs).logits
    torch.testing.assert_close(reloaded_logits, original_logits, rtol=0, atol=1e-5)
    # the demo's own reloaded copy answered the fresh image; it matches the weights on disk too
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, result.reloaded_model.state_dict()[name]), name


def test_quick_run_is_deterministic_given_the_seed(quick_run, tmp_path):
    result, _ = quick_run
    again = demo.run_demo(demo.parse_args(["--quick", "--output-dir", str(tmp_path), "--seed", "0"]))
    assert again.stages[1].losses == result.stages[1].losses
    original = result.model.state_dict()
    for name, tensor in again.model.state_dict().items():
        assert torch.equal(tensor, original[name]), name
    assert again.fresh_answers == result.fresh_answers
