"""Hostile inputs to the Qwen2-VL processing: impossible resize settings, images and videos that cannot be processed,
tokenizers and configs that do not fit. Each is refused with a clear error naming the problem (type and message
fragment), never processed into something silently wrong.

The family-independent hostile inputs (conversations, padding, truncation, normalisation settings) run on this
family's processor through ``tests/test_bad_inputs_processing.py`` once the family table lists it; these are the
family's own.
"""

from __future__ import annotations

import copy
import types

import jinja2
import numpy as np
import pytest
import torch

from vlmzoo.processing.image_processing_qwen2_vl import ZooDynamicResolutionImageProcessor, sample_frame_indices
from vlmzoo.processing.image_transforms import dynamic_resolution_num_tokens, smart_resize
from vlmzoo.processing.processing_qwen2_vl import CHAT_TEMPLATE, ZooQwen2VLProcessor, tiny_qwen2_vl_tokenizer
from vlmzoo.tiny_tokenizer import build_tiny_tokenizer

from _reference_qwen2_vl import random_image, random_video

# (id, smart_resize arguments, error, message fragment)
RESIZE_ERRORS = [
    ("min-above-max", (100, 100, 28, 5000, 4000), ValueError, r"min_pixels \(5000\) is larger than max_pixels \(4000\)"),
    ("aspect-ratio-over-200", (1, 201, 28), ValueError, r"1x201 pixels .* aspect ratio of 201; .* at most 200"),
    ("tall-aspect-ratio", (1000, 4, 28), ValueError, r"aspect ratio of 250"),
    ("empty-height", (0, 50), ValueError, r"empty image: 0x50 pixels"),
    ("negative-width", (50, -3), ValueError, r"empty image: 50x-3 pixels"),
    ("float-height", (50.0, 50), TypeError, r"height must be an integer"),
    ("bool-width", (50, True), TypeError, r"width must be an integer"),
    ("zero-min-pixels", (50, 50, 28, 0, 1000), ValueError, r"min_pixels must be positive, got 0"),
    ("max-below-one-block", (50, 50, 28, 100, 700), ValueError, r"max_pixels \(700\) is below one 28x28 block"),
    ("zero-factor", (50, 50, 0), ValueError, r"factor must be positive"),
]


@pytest.mark.parametrize("hostile", RESIZE_ERRORS, ids=[h[0] for h in RESIZE_ERRORS])
def test_smart_resize_refuses_impossible_settings(hostile):
    _, arguments, error, fragment = hostile
    with pytest.raises(error, match=fragment):
        smart_resize(*arguments)
    if len(arguments) < 3 or arguments[2] == 28:  # the docs' token count (patch 14 x merge 2) refuses the same
        with pytest.raises(error, match=fragment):
            dynamic_resolution_num_tokens(*arguments[:2], *arguments[3:])


# (id, image processor settings, error, message fragment): refused at construction and per call
SETTING_ERRORS = [
    ("min-above-max", {"min_pixels": 784 * 10, "max_pixels": 784 * 5}, ValueError, r"min_pixels \(7840\) is larger than max_pixels \(3920\)"),
    ("size-min-above-max", {"size": {"shortest_edge": 9000, "longest_edge": 800}}, ValueError, r"is larger than max_pixels"),
    ("size-with-height", {"size": {"height": 224, "width": 224}}, ValueError, r"size must be \{'shortest_edge': min_pixels, 'longest_edge': max_pixels\}"),
    ("size-a-side-length", {"size": 224}, ValueError, r"size must be .* \(pixel counts, not a side length\), got 224"),
    ("size-one-bound", {"size": {"shortest_edge": 3136}}, ValueError, r"size must be \{'shortest_edge'"),
    ("max-below-one-block", {"min_pixels": 100, "max_pixels": 500}, ValueError, r"max_pixels \(500\) is below one 28x28 block"),
    ("zero-patch-size", {"patch_size": 0}, ValueError, r"patch_size must be positive, got 0"),
    ("float-merge-size", {"merge_size": 2.0}, TypeError, r"merge_size must be an integer"),
    ("zero-std", {"image_std": [0.2, 0.0, 0.2]}, ValueError, r"image_std must be positive"),
    ("nan-mean", {"image_mean": [0.5, float("nan"), 0.5]}, ValueError, r"image_mean must be finite"),
    ("resample-typo", {"resample": "bicubik"}, ValueError, r"unknown resample 'bicubik' \(did you mean 'bicubic'\?\)"),
]  # fmt: skip


@pytest.mark.parametrize("hostile", SETTING_ERRORS, ids=[h[0] for h in SETTING_ERRORS])
def test_impossible_image_settings_are_refused_at_construction_and_per_call(hostile):
    _, settings, error, fragment = hostile
    with pytest.raises(error, match=fragment):
        ZooDynamicResolutionImageProcessor(**settings)
    with pytest.raises(error, match=fragment):
        ZooDynamicResolutionImageProcessor()([random_image(30, 30)], **settings)


def test_a_resample_name_acts_as_its_filter_on_images_and_videos():
    image, video = random_image(40, 70, seed=3), random_video(2, 40, 70, seed=3)
    named, member = ZooDynamicResolutionImageProcessor(resample="nearest"), ZooDynamicResolutionImageProcessor(resample=0)
    assert torch.equal(named([image], return_tensors="pt")["pixel_values"], member([image], return_tensors="pt")["pixel_values"])
    bicubic = ZooDynamicResolutionImageProcessor()(videos=video, return_tensors="pt")["pixel_values_videos"]
    nearest = named(videos=video, return_tensors="pt")["pixel_values_videos"]
    assert not torch.equal(bicubic, nearest)
    assert torch.equal(ZooDynamicResolutionImageProcessor()(videos=video, resample="nearest", return_tensors="pt")[
        "pixel_values_videos"], nearest)  # fmt: skip


def test_images_that_cannot_be_resized_are_named():
    image_processor = ZooDynamicResolutionImageProcessor()
    with pytest.raises(ValueError, match=r"the image is 1x300 pixels .* aspect ratio of 300"):
        image_processor([random_image(1, 300)])
    with pytest.raises(ValueError, match=r"do_resize=False .* multiples of 28 .* got 30x56"):
        image_processor([random_image(30, 56)], do_resize=False)
    assert image_processor([random_image(28, 56)], do_resize=False)["image_grid_thw"].tolist() == [[1, 2, 4]]
    with pytest.raises(ValueError, match=r"empty image"):
        image_processor([np.zeros((0, 10, 3), dtype=np.uint8)])
    with pytest.raises(ValueError, match=r"needs images= or videos="):
        image_processor()


VIDEO = random_video(6, 30, 40)
# (id, videos, options, error, message fragment)
VIDEO_ERRORS = [
    ("empty-list", [], {}, ValueError, r"the video has no frames \(an empty list\)"),
    ("zero-frame-array", np.zeros((0, 30, 40, 3), dtype=np.uint8), {}, ValueError, r"the video has no frames: an array of shape \(0, 30, 40, 3\)"),
    ("zero-frame-tensor", torch.zeros(0, 3, 30, 40, dtype=torch.uint8), {}, ValueError, r"the video has no frames"),
    ("empty-video-in-a-batch", [VIDEO, []], {}, ValueError, r"video 1 has no frames"),
    ("six-dimensions", np.zeros((1, 1, 2, 30, 40, 3), dtype=np.uint8), {}, ValueError, r"a video array must be \(T, H, W, C\)"),
    ("a-string", "clip.mp4", {}, TypeError, r"videos must be a list of frames"),
    ("frames-and-videos-mixed", [VIDEO, VIDEO[0]], {}, TypeError, r"videos mix frames and videos \(item 1 is one frame\)"),
    ("mixed-frame-sizes", [VIDEO[0], VIDEO[1, :20]], {}, ValueError, r"video 0 mixes frame sizes"),
    ("fps-without-metadata", VIDEO, {"fps": 2}, ValueError, r"sampling at fps needs the video's own frame rate: pass video_metadata"),
    ("fps-and-num-frames", VIDEO, {"fps": 2, "num_frames": 4, "video_metadata": {"fps": 6}}, ValueError, r"fps and num_frames both"),
    ("too-many-frames", VIDEO, {"num_frames": 10}, ValueError, r"cannot sample 10 frames .* from a video of 6 frames"),
    ("num-frames-rounds-to-zero", VIDEO, {"num_frames": 1}, ValueError, r"sampling leaves no frame \(num_frames=1 rounded"),
    ("one-frame-at-fps", VIDEO[:1], {"fps": 2, "video_metadata": {"fps": 6}}, ValueError, r"sampling leaves no frame \(fps=2 of a 1-frame video"),
    ("negative-fps", VIDEO, {"fps": -1, "video_metadata": {"fps": 6}}, ValueError, r"fps must be a positive number"),
    ("zero-source-fps", VIDEO, {"fps": 2, "video_metadata": {"fps": 0}}, ValueError, r"the video's frame rate .* must be a positive number"),
    ("metadata-count", [VIDEO, VIDEO], {"fps": 2, "video_metadata": [{"fps": 6}]}, ValueError, r"video_metadata must list one entry per video \(2 videos\), got 1"),
    ("video-min-above-max", VIDEO, {"video_min_pixels": 9000, "video_max_pixels": 8000}, ValueError, r"video_min_pixels \(9000\) is larger than video_max_pixels \(8000\)"),
    ("zero-token-budget", VIDEO, {"max_video_tokens": 0}, ValueError, r"max_video_tokens must be positive"),
    ("wide-frames", random_video(2, 2, 450), {}, ValueError, r"aspect ratio of 225"),
]  # fmt: skip


@pytest.mark.parametrize("hostile", VIDEO_ERRORS, ids=[h[0] for h in VIDEO_ERRORS])
def test_videos_that_cannot_be_processed_are_refused(hostile):
    _, videos, options, error, fragment = hostile
    with pytest.raises(error, match=fragment):
        ZooDynamicResolutionImageProcessor()(videos=videos, **options)


def test_sampling_is_off_when_asked_and_on_when_a_rate_is_given():
    image_processor = ZooDynamicResolutionImageProcessor()
    video = random_video(12, 30, 40)
    every = image_processor(videos=video)["video_grid_thw"][0][0]
    assert every == 6
    assert image_processor(videos=video, fps=1, video_metadata={"fps": 3}, do_sample_frames=False)["video_grid_thw"][0][0] == 6
    assert image_processor(videos=video, num_frames=4)["video_grid_thw"][0][0] == 2
    assert image_processor(videos=video, do_sample_frames=True)["video_grid_thw"][0][0] == 6  # no rate: every frame
    assert sample_frame_indices(12, num_frames=4) == [0, 3, 6, 9]


# ----- the processor -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def processor():
    return ZooQwen2VLProcessor(ZooDynamicResolutionImageProcessor(max_pixels=784 * 8), tiny_qwen2_vl_tokenizer())


def _prompt(processor, parts) -> str:
    content = [{"type": kind} for kind in parts] + [{"type": "text", "text": "What?"}]
    return processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)


def test_a_tokenizer_without_the_vision_tokens_is_refused():
    # the plain tiny tokenizer names "<image>" as its image token (read as transformers does) but has no video token
    with pytest.raises(ValueError, match=r"the tokenizer has no '<\|video_pad\|>' token; add it as a special token"):
        ZooQwen2VLProcessor(ZooDynamicResolutionImageProcessor(), build_tiny_tokenizer())
    with pytest.raises(TypeError, match=r"needs a ZooDynamicResolutionImageProcessor"):
        ZooQwen2VLProcessor(None, tiny_qwen2_vl_tokenizer())


def test_placeholder_and_media_counts_must_agree(processor):
    with pytest.raises(ValueError, match=r"video_pad\|> tokens .* 1 .* 2 videos|Found total 1 <\|video_pad\|> tokens and 2 videos"):
        processor(text=[_prompt(processor, ["video"])], videos=[VIDEO, VIDEO])
    with pytest.raises(ValueError, match=r"Found 1 <\|video_pad\|> tokens in the text but no videos"):
        processor(text=[_prompt(processor, ["video"])])
    with pytest.raises(ValueError, match=r"video 1 has no frames"):  # transformers would drop the empty video
        processor(text=[_prompt(processor, ["video", "video"])], videos=[VIDEO, []])
    with pytest.raises(ValueError, match=r"1 <\|image_pad\|> tokens and 2 images"):
        processor(text=[_prompt(processor, ["image"])], images=[random_image(30, 30)] * 2)


def test_truncation_into_the_video_tokens_is_refused(processor):
    # (transformers' own message: ZooProcessorMixin rewrites the image-token case only)
    with pytest.raises(ValueError, match=r"Mismatch in `video` token count between text and `input_ids`.*truncation"):
        processor(text=[_prompt(processor, ["video"])], videos=[VIDEO], truncation=True, max_length=20)


def test_video_parts_are_checked_like_image_parts(processor):
    in_reply = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": [{"type": "video"}]}]
    with pytest.raises(ValueError, match=r"turn 1, part 0 is a video in a turn of role 'assistant'.* videos in user turns"):
        processor.apply_chat_template(copy.deepcopy(in_reply))
    with pytest.raises(jinja2.exceptions.TemplateError, match=r"images go in user turns only, videos too"):
        processor.tokenizer.apply_chat_template(copy.deepcopy(in_reply), chat_template=CHAT_TEMPLATE, tokenize=False)
    typo = [{"role": "user", "content": [{"type": "vidoe"}]}]
    with pytest.raises(ValueError, match=r"unknown type 'vidoe' \(did you mean 'video'\?\); valid part types: text, image, image_url, video"):
        processor.apply_chat_template(copy.deepcopy(typo))
    with pytest.raises(jinja2.exceptions.TemplateError, match=r'a part is \{"type": "text", "text": \.\.\.\}, \{"type": "image"\}, \{"type": "video"\}'):
        processor.tokenizer.apply_chat_template(copy.deepcopy(typo), chat_template=CHAT_TEMPLATE, tokenize=False)
    empty = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What?"}]}]
    with pytest.raises(ValueError, match=r"turn 0, part 0: an video part holds no video|a video part holds no video"):
        processor.apply_chat_template(copy.deepcopy(empty), tokenize=True, return_dict=True)


def _config(image_token_id=5, video_token_id=6):
    vision = types.SimpleNamespace(patch_size=14, temporal_patch_size=2, spatial_merge_size=2)
    return types.SimpleNamespace(vision_config=vision, image_token_id=image_token_id, video_token_id=video_token_id)


def test_from_model_config_checks_the_token_ids():
    tokenizer = tiny_qwen2_vl_tokenizer()
    processor = ZooQwen2VLProcessor.from_model_config(_config(), tokenizer, image_processor_settings={"max_pixels": 784 * 9})
    assert processor.image_processor.size["longest_edge"] == 784 * 9 and processor.chat_template == CHAT_TEMPLATE
    with pytest.raises(ValueError, match=r"config.image_token_id is 7 but the tokenizer's <\|image_pad\|> has id 5"):
        ZooQwen2VLProcessor.from_model_config(_config(image_token_id=7), tokenizer)
    with pytest.raises(ValueError, match=r"config.video_token_id is 9 but the tokenizer's <\|video_pad\|> has id 6"):
        ZooQwen2VLProcessor.from_model_config(_config(video_token_id=9), tokenizer)


def test_a_grid_the_merger_cannot_merge_is_refused():
    from vlmzoo.geometry import merged_grid_tokens

    assert merged_grid_tokens((2, 4, 6), 2) == 12 and merged_grid_tokens((1, 3, 5), 1) == 15
    with pytest.raises(ValueError, match=r"patch grid \[1, 3, 4\]: h and w must be multiples of merge_size=2"):
        merged_grid_tokens((1, 3, 4), 2)
    with pytest.raises(ValueError, match=r"a patch grid is three positive integers \(t, h, w\), got \[0, 2, 2\]"):
        merged_grid_tokens((0, 2, 2), 2)
    with pytest.raises(ValueError, match=r"three positive integers"):
        merged_grid_tokens((2, 2), 2)
