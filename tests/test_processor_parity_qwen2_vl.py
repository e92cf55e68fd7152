"""vlmzoo's Qwen2-VL processing against transformers' for the same images, videos, prompts and settings.

- ``smart_resize`` equals transformers' on a grid of sizes x pixel ranges (both return the same size or both refuse).
- ``ZooDynamicResolutionImageProcessor`` equals ``Qwen2VLImageProcessorPil`` exactly (``pixel_values`` and
  ``image_grid_thw``) for tiny, very wide, very tall and odd sizes, PIL modes and array forms, under several
  settings (pixel ranges in both spellings, patch 16, merge 1, temporal patch 3).
- ``ZooQwen2VLProcessor`` equals transformers' ``Qwen2VLProcessor`` (the image-only construction of
  ``_reference_qwen2_vl``) on ``input_ids``, ``attention_mask``, ``mm_token_type_ids``, pixels and grids, and on
  ``_get_num_multimodal_tokens``.
- Videos equal transformers' video pipeline (its own ``sample_frames`` / ``resize`` / ``patchify`` code compiled from
  the installed source, with PIL frame resizing; see ``_reference_qwen2_vl``): frames as a list, a (T, H, W, C)
  array or a tensor, fps and num_frames sampling, the token budget, odd frame counts; and through the processor.
- ``dynamic_resolution_num_tokens`` (the docs' table) equals the tokens the processor writes.
- A saved and reloaded processor gives the same outputs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as reference_smart_resize

from vlmzoo.processing.image_processing_qwen2_vl import ZooDynamicResolutionImageProcessor
from vlmzoo.processing.image_transforms import dynamic_resolution_num_tokens, smart_resize, video_frame_max_pixels
from vlmzoo.processing.processing_qwen2_vl import (
    CHAT_TEMPLATE,
    TINY_TOKEN_IDS,
    ZooQwen2VLProcessor,
    tiny_qwen2_vl_tokenizer,
)

from _reference_qwen2_vl import (
    ImageOnlyQwen2VLProcessor,
    ReferenceVideoProcessor,
    random_image,
    random_video,
    reference_video,
    video_capable_reference,
)

SIDES = [1, 2, 3, 13, 14, 27, 28, 29, 41, 55, 56, 57, 100, 223, 224, 225, 333, 999, 1000, 4097]
PIXEL_RANGES = [(56 * 56, 28 * 28 * 1280), (28 * 28, 28 * 28 * 4), (100 * 28 * 28, 16384 * 28 * 28), (1, 28 * 28),
                (4 * 28 * 28, 4 * 28 * 28), (28 * 28 * 16, 28 * 28 * 64)]  # fmt: skip
FACTORS = [28, 32, 14]


def test_smart_resize_equals_transformers():
    cases = refused = 0
    for factor in FACTORS:
        for min_pixels, max_pixels in PIXEL_RANGES:
            if max_pixels < factor * factor:
                continue  # refused here on purpose (test_bad_inputs_qwen2_vl), transformers exceeds max_pixels
            for height in SIDES:
                for width in SIDES:
                    try:
                        expected = reference_smart_resize(height, width, factor, min_pixels, max_pixels)
                    except ValueError:
                        with pytest.raises(ValueError, match="aspect ratio"):
                            smart_resize(height, width, factor, min_pixels, max_pixels)
                        refused += 1
                    else:
                        assert smart_resize(height, width, factor, min_pixels, max_pixels) == expected, (height, width)
                    cases += 1
    assert cases > 2000 and refused > 0


# (height, width, mode): tiny, very wide and tall (ratio up to 199), odd, square, modes transformers converts
IMAGES = [(1, 1, "RGB"), (2, 3, "RGB"), (1, 150, "RGB"), (199, 1, "RGB"), (10, 1990, "RGB"), (37, 41, "RGB"),
          (57, 29, "L"), (224, 224, "RGB"), (111, 333, "RGBA"), (64, 50, "P"), (45, 90, "LA"), (31, 77, "CMYK"),
          (300, 17, "RGB"), (28, 28, "1")]  # fmt: skip
SETTINGS = {
    "defaults": {},
    "small-range": {"min_pixels": 28 * 28, "max_pixels": 28 * 28 * 16},
    "size-form": {"size": {"shortest_edge": 28 * 28 * 4, "longest_edge": 28 * 28 * 40}},
    "patch-16": {"patch_size": 16, "max_pixels": 32 * 32 * 30},
    "merge-1": {"merge_size": 1, "max_pixels": 14 * 14 * 50},
    "temporal-3": {"temporal_patch_size": 3, "max_pixels": 28 * 28 * 20},
    "bilinear-no-normalise": {"resample": Image.Resampling.BILINEAR, "do_normalize": False, "max_pixels": 28 * 28 * 30},
}


def _assert_same_images(ours, theirs, images, **call):
    mine, reference = ours(images, return_tensors="pt", **call), theirs(images, return_tensors="pt", **call)
    assert torch.equal(mine["image_grid_thw"], reference["image_grid_thw"])
    assert mine["pixel_values"].dtype == reference["pixel_values"].dtype == torch.float32
    assert torch.equal(mine["pixel_values"], reference["pixel_values"])
    return mine


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_image_processor_equals_transformers(setting):
    ours = ZooDynamicResolutionImageProcessor(**SETTINGS[setting])
    theirs = Qwen2VLImageProcessorPil(**SETTINGS[setting])
    images = [random_image(h, w, mode, seed=i) for i, (h, w, mode) in enumerate(IMAGES)]
    for image in images:  # one at a time (each grid), then all together (concatenated in order)
        _assert_same_images(ours, theirs, [image])
    out = _assert_same_images(ours, theirs, images)
    grids = out["image_grid_thw"]
    assert grids.shape == (len(IMAGES), 3) and (grids[:, 0] == 1).all()
    assert out["pixel_values"].shape[0] == int(grids.prod(dim=1).sum())


sides = st.one_of(st.integers(1, 30), st.integers(31, 420))
pixel_settings = st.sampled_from([{}, SETTINGS["small-range"], SETTINGS["size-form"], SETTINGS["patch-16"],
                                  SETTINGS["merge-1"], {"min_pixels": 784 * 30, "max_pixels": 784 * 60}])  # fmt: skip


@settings(max_examples=60, deadline=None, derandomize=True)
@given(height=sides, width=sides, options=pixel_settings, mode=st.sampled_from(["RGB", "L", "RGBA", "P"]))
def test_image_processor_equals_transformers_on_generated_sizes(height, width, options, mode):
    image = random_image(height, width, mode, seed=height * 1000 + width)
    ours, theirs = ZooDynamicResolutionImageProcessor(**options), Qwen2VLImageProcessorPil(**options)
    if max(height, width) / min(height, width) > 200:
        with pytest.raises(ValueError, match="aspect ratio"):
            ours([image])
        return
    _assert_same_images(ours, theirs, [image])


def test_array_and_tensor_images_equal_transformers():
    ours, theirs = ZooDynamicResolutionImageProcessor(max_pixels=28 * 28 * 30), Qwen2VLImageProcessorPil(max_pixels=28 * 28 * 30)
    pixels = np.array(random_image(47, 83, seed=5))  # (H, W, 3) uint8
    forms = [pixels, torch.from_numpy(pixels).permute(2, 0, 1), torch.from_numpy(pixels)]
    reference = theirs([Image.fromarray(pixels)], return_tensors="pt")["pixel_values"]
    for form in forms:
        assert torch.equal(_assert_same_images(ours, theirs, [form])["pixel_values"], reference)


def test_per_call_pixel_range_equals_transformers():
    ours, theirs = ZooDynamicResolutionImageProcessor(), Qwen2VLImageProcessorPil()
    images = [random_image(90, 60, seed=1), random_image(5, 400, seed=2)]
    size = {"shortest_edge": 28 * 28 * 2, "longest_edge": 28 * 28 * 12}
    mine = _assert_same_images(ours, theirs, images, size=size)
    spelled = ours(images, return_tensors="pt", min_pixels=size["shortest_edge"], max_pixels=size["longest_edge"])
    assert torch.equal(spelled["pixel_values"], mine["pixel_values"])
    assert ours.size == {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 1280}  # the call changed nothing


# ----- the processor ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer():
    return tiny_qwen2_vl_tokenizer()


def _prompt(tokenizer, parts, question="What is in it?") -> str:
    content = [{"type": kind} for kind in parts] + [{"type": "text", "text": question}]
    return tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True)


def test_tiny_tokenizer_ids_and_template(tokenizer):
    assert TINY_TOKEN_IDS == {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2, "<|vision_start|>": 3,
                              "<|vision_end|>": 4, "<|image_pad|>": 5, "<|video_pad|>": 6}  # fmt: skip
    for token, token_id in TINY_TOKEN_IDS.items():
        assert tokenizer.convert_tokens_to_ids(token) == token_id
        assert tokenizer.encode(token, add_special_tokens=True) == [token_id]
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token) == (0, 2, None)
    assert (tokenizer.image_token, tokenizer.video_token) == ("<|image_pad|>", "<|video_pad|>")
    # Qwen2-VL-Instruct's rendering, written out by hand
    assert _prompt(tokenizer, ["image", "video"], "Hi?") == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|image_pad|><|vision_end|><|vision_start|><|video_pad|><|vision_end|>Hi?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    conversation = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "A cat."}]
    encoded = tokenizer.apply_chat_template(conversation, return_assistant_tokens_mask=True, return_dict=True)
    learned = [token for token, mask in zip(encoded["input_ids"], encoded["assistant_masks"]) if mask]
    assert tokenizer.decode(learned) == "A cat.<|im_end|>"


def _processors(tokenizer, **settings):
    ours = ZooQwen2VLProcessor(ZooDynamicResolutionImageProcessor(**settings), tokenizer, chat_template=CHAT_TEMPLATE)
    theirs = ImageOnlyQwen2VLProcessor(Qwen2VLImageProcessorPil(**settings), tokenizer, chat_template=CHAT_TEMPLATE)
    return ours, theirs


def _assert_same_encoding(mine, reference):
    assert sorted(mine.keys()) == sorted(reference.keys())
    for key in reference:
        assert torch.equal(mine[key], reference[key]), key


# batches: images per sample
BATCHES = {
    "one-image": [1],
    "two-images-in-one-prompt": [2],
    "batch-of-three": [1, 0, 2],
    "text-only": [0, 0],
}


@pytest.mark.parametrize("settings", ["defaults", "small-range", "patch-16"])
@pytest.mark.parametrize("batch", list(BATCHES))
def test_processor_equals_transformers(tokenizer, settings, batch):
    ours, theirs = _processors(tokenizer, **SETTINGS[settings])
    counts = BATCHES[batch]
    texts = [_prompt(tokenizer, ["image"] * count) for count in counts]
    sizes = [IMAGES[(3 * i + 2) % len(IMAGES)] for i in range(sum(counts))]
    images = [random_image(h, w, mode, seed=i) for i, (h, w, mode) in enumerate(sizes)] or None
    call = dict(images=images, text=texts, return_tensors="pt", padding=True)
    mine, reference = ours(**call), theirs(**call)
    _assert_same_encoding(mine, reference)
    assert "mm_token_type_ids" in mine
    # every image placeholder is one merged token, and mm_token_type_ids marks exactly them
    image_tokens = mine["input_ids"] == TINY_TOKEN_IDS["<|image_pad|>"]
    assert torch.equal(mine["mm_token_type_ids"] == 1, image_tokens)
    if images:
        merge = ours.image_processor.merge_size
        assert int(image_tokens.sum()) == int(mine["image_grid_thw"].prod(dim=1).sum()) // merge**2
        hook, reference_hook = (processor._get_num_multimodal_tokens(image_sizes=[s[:2] for s in sizes])
                                for processor in (ours, theirs))  # fmt: skip
        assert hook.num_image_tokens == reference_hook.num_image_tokens
        assert hook.num_image_patches == reference_hook.num_image_patches
        per_image = (mine["image_grid_thw"].prod(dim=1) // merge**2).tolist()
        assert hook.num_image_tokens == per_image


def test_mm_token_type_ids_only_when_asked(tokenizer):
    ours, theirs = _processors(tokenizer, max_pixels=28 * 28 * 8)
    call = dict(images=[random_image(40, 40)], text=[_prompt(tokenizer, ["image"])], return_tensors="pt")
    for flag in (True, False):
        mine, reference = ours(**call, return_mm_token_type_ids=flag), theirs(**call, return_mm_token_type_ids=flag)
        _assert_same_encoding(mine, reference)
        assert ("mm_token_type_ids" in mine) is flag
    # transformers' names come from its video processor too (not built here)
    assert set(ours.model_input_names) == set(theirs.model_input_names) | {"pixel_values_videos", "video_grid_thw"}


# ----- videos ----------------------------------------------------------------------------------------------------
# (frames, height, width, our options, the reference's options)
VIDEOS = {
    "five-frames": (5, 60, 90, {}, {}),
    "one-frame": (1, 37, 41, {}, {}),
    "two-frames-tiny": (2, 5, 6, {}, {}),
    "odd-and-wide": (7, 20, 300, {}, {}),
    "small-range": (4, 50, 70, {"video_min_pixels": 784, "video_max_pixels": 784 * 6},
                    {"min_pixels": 784, "max_pixels": 784 * 6}),
    "budget-binding": (7, 600, 560, {"max_video_tokens": 700}, {"max_video_tokens": 700}),
    "budget-floor": (9, 100, 300, {"max_video_tokens": 300}, {"max_video_tokens": 300}),
    "fps": (30, 40, 50, {"fps": 2, "video_metadata": {"fps": 10}}, {"sample": True, "source_fps": 10, "fps": 2}),
    "fps-min-frames": (12, 40, 50, {"fps": 0.5, "video_metadata": {"fps": 24}},
                       {"sample": True, "source_fps": 24, "fps": 0.5}),
    "num-frames": (30, 40, 50, {"num_frames": 7}, {"sample": True, "num_frames": 7}),
    "num-frames-all": (6, 40, 50, {"num_frames": 6}, {"sample": True, "num_frames": 6}),
}  # fmt: skip


@pytest.mark.parametrize("name", list(VIDEOS))
def test_video_equals_transformers_video_pipeline(name):
    frames, height, width, options, reference_options = VIDEOS[name]
    video = random_video(frames, height, width, seed=frames)
    patches, grid = reference_video(video, **reference_options)
    ours = ZooDynamicResolutionImageProcessor()
    forms = [video, list(video), [Image.fromarray(frame) for frame in video], torch.from_numpy(video),
             torch.from_numpy(video).permute(0, 3, 1, 2)]  # fmt: skip
    for form in forms:
        out = ours(videos=form, return_tensors="pt", **options)
        assert out["video_grid_thw"].tolist() == [grid]
        assert torch.equal(out["pixel_values_videos"], patches)


def test_video_budget_and_sampling_change_the_grid():
    """The budget shrinks frames (to 90% of it for an even frame count) and fps sampling keeps duration x fps frames."""
    ours = ZooDynamicResolutionImageProcessor()
    video = random_video(8, 600, 560)
    free, capped = (ours(videos=video, max_video_tokens=budget)["video_grid_thw"][0] for budget in (None, 700))
    assert free[1] * free[2] > capped[1] * capped[2] and free[0] == capped[0] == 4
    assert int(capped.prod()) // 4 <= 0.9 * 700
    per_frame = video_frame_max_pixels(8, 128 * 784, 768 * 784, 700)
    assert per_frame == int(700 * 784 * 0.9) * 2 // 8 and capped[1] * capped[2] * 196 <= per_frame
    sampled = ours(videos=random_video(40, 30, 30), fps=1, video_metadata={"fps": 4})["video_grid_thw"][0]
    assert sampled[0] == 10 // 2  # 40 frames at 4 fps = 10 s; 10 frames at 1 fps = 5 temporal patches


def test_the_metadata_names_the_sampled_frames():
    """return_metadata gives each video's frame indices: those transformers' own sample_frames picks."""
    from transformers.video_utils import VideoMetadata

    reference = ReferenceVideoProcessor()
    out = ZooDynamicResolutionImageProcessor()(videos=[random_video(30, 20, 30), random_video(11, 20, 30)], fps=2,
                                               video_metadata=[{"fps": 10}, {"fps": 3}], return_metadata=True)  # fmt: skip
    for metadata, (total, rate) in zip(out["video_metadata"], [(30, 10), (11, 3)]):
        expected = reference.sample_frames(VideoMetadata(total_num_frames=total, fps=rate), fps=2).tolist()
        assert metadata.frames_indices == expected and metadata.total_num_frames == total and metadata.fps == rate
        assert (metadata.height, metadata.width) == (20, 30)
    assert "video_metadata" not in ZooDynamicResolutionImageProcessor()(videos=random_video(2, 20, 30))


def test_two_identical_frames_are_the_image():
    """An image is one temporal patch of two identical frames: the same patches as a video of that frame twice."""
    frame = np.asarray(random_image(45, 67, seed=9))
    ours = ZooDynamicResolutionImageProcessor(min_pixels=784, max_pixels=784 * 20, video_min_pixels=784, video_max_pixels=784 * 20)
    image = ours([frame], return_tensors="pt")
    for video in (np.stack([frame, frame]), np.stack([frame])):  # a 1-frame video repeats its frame
        out = ours(videos=video, return_tensors="pt")
        assert torch.equal(out["pixel_values_videos"], image["pixel_values"])
        assert torch.equal(out["video_grid_thw"], image["image_grid_thw"])


def test_a_batch_of_videos_concatenates_in_order():
    ours = ZooDynamicResolutionImageProcessor()
    first, second = random_video(3, 40, 60, seed=1), random_video(4, 70, 30, seed=2)
    batch = ours(videos=[first, list(second)], return_tensors="pt")
    alone = [ours(videos=video, return_tensors="pt") for video in (first, second)]
    assert torch.equal(batch["pixel_values_videos"], torch.cat([out["pixel_values_videos"] for out in alone]))
    assert torch.equal(batch["video_grid_thw"], torch.cat([out["video_grid_thw"] for out in alone]))
    other = random_video(3, 40, 60, seed=3)
    five_d = ours(videos=np.stack([first, other]), return_tensors="pt")  # (B, T, H, W, C)
    as_list = ours(videos=[first, other], return_tensors="pt")
    assert torch.equal(five_d["pixel_values_videos"], as_list["pixel_values_videos"])
    assert five_d["video_grid_thw"].tolist() == [batch["video_grid_thw"][0].tolist()] * 2


@pytest.mark.parametrize("sampling", [{}, {"do_sample_frames": True, "fps": 2, "video_metadata": [{"fps": 6}, {"fps": 3}]},
                                      {"do_sample_frames": True, "num_frames": 4}])  # fmt: skip
def test_processor_with_videos_equals_transformers(tokenizer, sampling):
    ours = ZooQwen2VLProcessor(ZooDynamicResolutionImageProcessor(max_pixels=784 * 10), tokenizer, chat_template=CHAT_TEMPLATE)
    theirs = video_capable_reference(Qwen2VLImageProcessorPil(max_pixels=784 * 10), tokenizer, CHAT_TEMPLATE)
    videos = [random_video(9, 40, 52, seed=1), random_video(6, 33, 70, seed=2)]
    texts = [_prompt(tokenizer, ["image", "video"]), _prompt(tokenizer, ["video"], "And this?")]
    call = dict(images=[random_image(30, 90)], videos=videos, text=texts, return_tensors="pt", padding=True, **sampling)
    mine, reference = ours(**call), theirs(**call)
    _assert_same_encoding(mine, reference)
    video_tokens = mine["input_ids"] == TINY_TOKEN_IDS["<|video_pad|>"]
    assert torch.equal(mine["mm_token_type_ids"] == 2, video_tokens)
    assert int(video_tokens.sum()) == int(mine["video_grid_thw"].prod(dim=1).sum()) // 4
    # sampling kept 4 of 9 and 4 of 6 frames (fps: 1.5 s and 2 s at 2 fps, raised to min_frames=4)
    assert mine["video_grid_thw"][:, 0].tolist() == ([2, 2] if sampling else [5, 3])
    if not sampling:
        hook = ours._get_num_multimodal_tokens(video_sizes=[video.shape[:3] for video in videos])
        assert hook.num_video_tokens == (mine["video_grid_thw"].prod(dim=1) // 4).tolist()


def test_frames_in_the_messages_equal_the_direct_call(tokenizer):
    """apply_chat_template(tokenize=True) reads a video's frames (an array or PIL frames) from its message part."""
    processor = ZooQwen2VLProcessor(ZooDynamicResolutionImageProcessor(max_pixels=784 * 8), tokenizer)
    video, image = random_video(5, 30, 40, seed=4), random_image(30, 50, seed=5)
    direct = processor(videos=[video], images=[image], text=[_prompt(tokenizer, ["video", "image"], "Hi")], return_tensors="pt")
    for frames in (video, [Image.fromarray(frame) for frame in video]):
        content = [{"type": "video", "video": frames}, {"type": "image", "image": image}, {"type": "text", "text": "Hi"}]
        from_messages = processor.apply_chat_template([{"role": "user", "content": content}], tokenize=True,
                                                      return_dict=True, add_generation_prompt=True, return_tensors="pt")  # fmt: skip
        _assert_same_encoding(from_messages, direct)


def test_saved_transformers_settings_load():
    """A Qwen2-VL checkpoint's preprocessor_config.json settings, in the spellings transformers has written."""
    expected = ZooDynamicResolutionImageProcessor(size={"shortest_edge": 3136, "longest_edge": 12845056})
    for saved in ({"min_pixels": 3136, "max_pixels": 12845056}, {"size": {"min_pixels": 3136, "max_pixels": 12845056}}):
        loaded = ZooDynamicResolutionImageProcessor.from_dict({**saved, "patch_size": 14, "merge_size": 2,
                                                               "temporal_patch_size": 2})  # fmt: skip
        assert loaded.to_dict() == expected.to_dict()


# ----- token counts without pixels (the docs' table) -------------------------------------------------------------
def test_token_count_helper_equals_the_processor(tokenizer):
    assert dynamic_resolution_num_tokens(224, 224) == 64  # 224 = 8 x 28: an 8 x 8 merged grid
    assert dynamic_resolution_num_tokens(28, 28, min_pixels=28 * 28) == 1
    assert dynamic_resolution_num_tokens(28, 28) == 4  # min_pixels 56 x 56 grows it to 56 x 56
    theirs = Qwen2VLImageProcessorPil()
    for min_pixels, max_pixels in PIXEL_RANGES[:4]:
        ours = ZooQwen2VLProcessor(ZooDynamicResolutionImageProcessor(min_pixels=min_pixels, max_pixels=max_pixels), tokenizer)
        for height, width, mode in IMAGES[:9]:
            count = dynamic_resolution_num_tokens(height, width, min_pixels=min_pixels, max_pixels=max_pixels)
            options = {"size": {"shortest_edge": min_pixels, "longest_edge": max_pixels}}
            assert count == theirs.get_number_of_image_patches(height, width, options) // 4
            if max_pixels <= 28 * 28 * 1280:
                encoded = ours(images=[random_image(height, width, mode)], text=[_prompt(tokenizer, ["image"])])
                assert encoded["input_ids"][0].count(TINY_TOKEN_IDS["<|image_pad|>"]) == count
    frames = dynamic_resolution_num_tokens(60, 90, min_pixels=128 * 784, max_pixels=768 * 784, num_frames=5)
    out = ZooDynamicResolutionImageProcessor()(videos=random_video(5, 60, 90))
    assert frames == int(np.prod(out["video_grid_thw"][0])) // 4


# ----- save and load ---------------------------------------------------------------------------------------------
def test_save_and_load_give_the_same_outputs(tokenizer, tmp_path):
    image_processor = ZooDynamicResolutionImageProcessor(
        min_pixels=784 * 2, max_pixels=784 * 30, video_min_pixels=784, video_max_pixels=784 * 8, max_video_tokens=50,
        resample=Image.Resampling.BILINEAR,
    )  # fmt: skip
    processor = ZooQwen2VLProcessor(image_processor, tokenizer)
    call = dict(images=[random_image(50, 80)], videos=[random_video(5, 40, 40)], return_tensors="pt",
                text=[_prompt(tokenizer, ["image", "video"])])  # fmt: skip
    before = processor(**call)
    processor.save_pretrained(tmp_path)
    # the family table registers the image processor with AutoImageProcessor; here it is loaded by its class
    loaded_image_processor = ZooDynamicResolutionImageProcessor.from_pretrained(tmp_path)
    reloaded = ZooQwen2VLProcessor.from_pretrained(tmp_path, image_processor=loaded_image_processor)
    assert loaded_image_processor.to_dict() == image_processor.to_dict()
    assert reloaded.chat_template == processor.chat_template and reloaded.video_processor is reloaded.image_processor
    after = reloaded(**call)
    _assert_same_encoding(after, before)
    assert not (tmp_path / "video_preprocessor_config.json").exists()
