"""Naive dynamic resolution image (and video) processor: Qwen2-VL (Wang et al. 2024).

Images: each is resized (PIL, bicubic) to the size :func:`~vlmzoo.processing.image_transforms.smart_resize` picks
(sides multiples of ``patch_size * merge_size``, pixel count within ``size["shortest_edge"]`` ..
``size["longest_edge"]``, i.e. ``min_pixels`` .. ``max_pixels``), rescaled, normalised with the OpenAI CLIP
mean/std and cut into 14x14 patches in 2x2 merge-block order; an image is one temporal patch of two identical
frames, so each patch row holds ``3 * 2 * 14 * 14 = 1176`` values. ``pixel_values`` holds the patches of all images
concatenated, ``(sum of t*h*w, 1176)``; ``image_grid_thw`` one ``(1, h, w)`` row per image. Pixel-for-pixel equal to
transformers' ``Qwen2VLImageProcessorPil`` with the same settings.

Videos (``videos=``, as transformers' image processor took them before it had a separate video processor; its
``Qwen2VLVideoProcessor`` needs torchvision): a video is a list of frames (PIL images, arrays, tensors) or one
``(T, H, W, C)`` / ``(T, C, H, W)`` uint8 array or tensor; a batch is a list of those. Frames may be sampled
(``fps`` with the source frame rate in ``video_metadata``, or ``num_frames``) exactly as ``Qwen2VLVideoProcessor``
samples them, and a per-video token budget (``max_video_tokens``, transformers' ``cap_pixels_per_frame``) shrinks
the frames. Every frame of a video gets one size (from ``video_min_pixels`` / ``video_max_pixels``, transformers'
video defaults), is resized, rescaled and normalised as an image is, and consecutive pairs of frames form one
temporal patch (an odd count repeats the last frame). ``pixel_values_videos`` / ``video_grid_thw`` as for images.
Frames are resized with PIL, as images are: the geometry (sizes, grids, token counts) is transformers' video
processor's, the resampled pixels differ slightly from its torchvision resize.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import PIL.Image
import torch
from huggingface_hub.dataclasses import validate_typed_dict
from transformers.image_processing_backends import PilBackend
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PILImageResampling, SizeDict
from transformers.processing_utils import ImagesKwargs
from transformers.video_utils import VideoMetadata

from .image_processing_common import VIEW_SETTINGS, ZooImageInputMixin, check_view_settings
from .image_transforms import (
    DYNAMIC_MAX_PIXELS,
    DYNAMIC_MIN_PIXELS,
    VIDEO_MAX_PIXELS,
    VIDEO_MIN_PIXELS,
    check_positive_int,
    check_pixel_range,
    patchify_frames,
    smart_resize,
    video_frame_max_pixels,
)


class ZooDynamicResolutionImagesKwargs(ImagesKwargs, total=False):
    """min_pixels / max_pixels: the image pixel range (also ``size={"shortest_edge": min, "longest_edge": max}``);
    patch_size, temporal_patch_size, merge_size: the vision tower's patch geometry; video_min_pixels /
    video_max_pixels: the per-frame range of videos; max_video_tokens: a video's token budget (None: none); fps /
    num_frames / min_frames / max_frames / do_sample_frames / video_metadata: frame sampling."""

    min_pixels: int
    max_pixels: int
    patch_size: int
    temporal_patch_size: int
    merge_size: int
    video_min_pixels: int
    video_max_pixels: int
    max_video_tokens: int | None
    fps: int | float | None
    num_frames: int | None
    min_frames: int
    max_frames: int
    do_sample_frames: bool | None
    video_metadata: Any
    return_metadata: bool | None


# the options only videos read (the image path ignores them)
VIDEO_OPTIONS = (
    "video_min_pixels", "video_max_pixels", "max_video_tokens", "fps", "num_frames", "min_frames", "max_frames",
    "do_sample_frames", "video_metadata", "return_metadata",
)  # fmt: skip


def sample_frame_indices(
    total_frames: int,
    *,
    source_fps: float | None = None,
    fps: float | None = None,
    num_frames: int | None = None,
    min_frames: int = 4,
    max_frames: int = 768,
    temporal_patch_size: int = 2,
) -> list[int]:
    """Indices of the frames kept from a ``total_frames``-frame video, as ``Qwen2VLVideoProcessor.sample_frames``.

    ``num_frames``: that many (rounded to a multiple of ``temporal_patch_size``), evenly spaced. ``fps``: the
    video's duration (``total_frames / source_fps`` seconds) times ``fps``, clamped to ``min_frames`` ..
    ``max_frames`` and to the frames there are, rounded down to a multiple of ``temporal_patch_size``. Neither:
    every frame. ``ValueError`` where transformers fails or would divide by zero: both given, ``fps`` without the
    source rate, more frames asked than there are, or no frame left.
    """
    if fps is not None and num_frames is not None:
        raise ValueError("fps and num_frames both ask for a frame count; give one of them")
    if num_frames is not None:
        wanted = round(check_positive_int("num_frames", num_frames) / temporal_patch_size) * temporal_patch_size
        rule = f"num_frames={num_frames} rounded to a multiple of temporal_patch_size={temporal_patch_size}"
    elif fps is not None:
        if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not fps > 0 or not math.isfinite(fps):
            raise ValueError(f"fps must be a positive number, got {fps!r}")
        if source_fps is None:
            raise ValueError(
                "sampling at fps needs the video's own frame rate: pass video_metadata={'fps': <frames per second>} "
                "(one per video), or num_frames instead of fps"
            )
        if isinstance(source_fps, bool) or not isinstance(source_fps, (int, float)) or not source_fps > 0:
            raise ValueError(f"the video's frame rate (video_metadata fps) must be a positive number, got {source_fps!r}")
        limit = math.floor(min(max_frames, total_frames) / temporal_patch_size) * temporal_patch_size
        wanted = min(max(total_frames / source_fps * fps, min_frames), limit, total_frames)
        wanted = math.floor(wanted / temporal_patch_size) * temporal_patch_size
        rule = f"fps={fps} of a {total_frames}-frame video at {source_fps} fps (max_frames={max_frames})"
    else:
        return list(range(total_frames))
    if wanted > total_frames:
        raise ValueError(
            f"cannot sample {wanted} frames ({rule}) from a video of {total_frames} frames; ask for fewer frames"
        )
    if wanted <= 0:
        raise ValueError(
            f"sampling leaves no frame ({rule}): a video needs at least {temporal_patch_size} sampled frames; ask "
            f"for more frames or pass the video without sampling"
        )
    # float32 steps truncated to int, exactly as transformers' torch.arange(...).int()
    return torch.arange(0, total_frames, total_frames / wanted).int().tolist()


def _is_frame(item) -> bool:
    if isinstance(item, PIL.Image.Image):
        return True
    return isinstance(item, (np.ndarray, torch.Tensor)) and item.ndim in (2, 3)


def split_videos(videos) -> list[list]:
    """``videos`` (one video or a batch) as a list of videos, each a list of frames.

    One video: a list of frames (PIL images, (H, W[, C]) arrays or tensors), or a 4-D ``(T, H, W, C)`` /
    ``(T, C, H, W)`` array or tensor; a single frame is a one-frame video (as transformers reads it). A batch: a
    list of videos, or a 5-D array. ``ValueError`` for a video without frames, ``TypeError`` for anything else.
    """
    if isinstance(videos, (np.ndarray, torch.Tensor)):
        if videos.ndim == 5:
            return [split_videos(video)[0] for video in videos]
        if videos.ndim == 4:
            if videos.shape[0] == 0:
                raise ValueError(f"the video has no frames: an array of shape {tuple(videos.shape)}")
            return [list(videos)]
        if videos.ndim in (2, 3):
            return [[videos]]
        raise ValueError(
            f"a video array must be (T, H, W, C) or (T, C, H, W), a batch (B, T, H, W, C); got shape {tuple(videos.shape)}"
        )
    if isinstance(videos, PIL.Image.Image):
        return [[videos]]
    if not isinstance(videos, (list, tuple)):
        raise TypeError(
            f"videos must be a list of frames (PIL images or arrays), a (T, H, W, C) array or tensor, or a list of "
            f"those; got {type(videos).__name__}"
        )
    if not videos:
        raise ValueError("the video has no frames (an empty list); give at least one frame")
    if all(_is_frame(item) for item in videos):
        return [list(videos)]
    # videos nested per sample (a batch of conversations: [[video, ...], [], ...]): a sample without videos is an
    # empty list; otherwise an empty list is a video without frames
    per_sample = any(
        isinstance(item, (list, tuple)) and item and not any(_is_frame(frame) for frame in item) for item in videos
    )
    split = []
    for index, video in enumerate(videos):
        if isinstance(video, (list, tuple)) and not video:
            if per_sample:
                continue
            raise ValueError(f"video {index} has no frames (an empty list); give at least one frame per video")
        if _is_frame(video):
            raise TypeError(
                f"videos mix frames and videos (item {index} is one frame); pass one list of frames per video"
            )
        split.extend(split_videos(video))
    return split


def _source_fps(metadata) -> float | None:
    if metadata is None:
        return None
    if isinstance(metadata, (int, float)) and not isinstance(metadata, bool):
        return metadata
    fps = metadata.get("fps") if isinstance(metadata, Mapping) else getattr(metadata, "fps", None)
    return fps


def _per_video_metadata(video_metadata, num_videos: int) -> list:
    if video_metadata is None or isinstance(video_metadata, (Mapping, int, float)) or hasattr(video_metadata, "fps"):
        if num_videos > 1 and video_metadata is not None:
            raise ValueError(f"video_metadata must list one entry per video ({num_videos} videos), got one")
        return [video_metadata] * num_videos
    if not isinstance(video_metadata, Sequence) or len(video_metadata) != num_videos:
        size = len(video_metadata) if isinstance(video_metadata, Sequence) else type(video_metadata).__name__
        raise ValueError(f"video_metadata must list one entry per video ({num_videos} videos), got {size}")
    return list(video_metadata)


class ZooDynamicResolutionImageProcessor(ZooImageInputMixin, PilBackend):
    """Qwen2-VL's naive dynamic resolution: smart_resize, rescale, normalise, 2x2-merge-ordered patches; videos too
    (``videos=``, see the module docstring)."""

    valid_kwargs = ZooDynamicResolutionImagesKwargs
    model_input_names = ["pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw"]

    do_resize = True
    resample = PILImageResampling.BICUBIC
    size = {"shortest_edge": DYNAMIC_MIN_PIXELS, "longest_edge": DYNAMIC_MAX_PIXELS}
    default_to_square = False
    do_rescale = True
    do_normalize = True
    image_mean = OPENAI_CLIP_MEAN
    image_std = OPENAI_CLIP_STD
    do_convert_rgb = True
    patch_size = 14
    temporal_patch_size = 2
    merge_size = 2
    video_min_pixels = VIDEO_MIN_PIXELS
    video_max_pixels = VIDEO_MAX_PIXELS
    max_video_tokens = None
    fps = None
    num_frames = None
    min_frames = 4
    max_frames = 768
    do_sample_frames = None
    return_metadata = False

    def __init__(self, **kwargs):
        # min_pixels / max_pixels are the size's bounds (transformers' backward-compatible form): fold them in
        size = kwargs.pop("size", None)
        size = dict(self.size) if size is None else dict(size) if isinstance(size, (Mapping, SizeDict)) else size
        bounds = {"shortest_edge": kwargs.pop("min_pixels", None), "longest_edge": kwargs.pop("max_pixels", None)}
        if isinstance(size, dict):  # (a size of another form is refused by _standardize_kwargs, naming the form)
            size.update({key: value for key, value in bounds.items() if value is not None})
        super().__init__(size=size, **kwargs)

    def _standardize_kwargs(self, size=None, min_pixels=None, max_pixels=None, **kwargs) -> dict:
        # at construction and on every call: per-call min_pixels / max_pixels override the size's bounds
        if isinstance(size, Mapping) and {"min_pixels", "max_pixels"} & set(size):
            # an older saved form, size={"min_pixels": ..., "max_pixels": ...}
            renamed = {"min_pixels": "shortest_edge", "max_pixels": "longest_edge"}
            size = {renamed.get(key, key): value for key, value in size.items()}
        if min_pixels is not None or max_pixels is not None:
            size = dict(size) if isinstance(size, (Mapping, SizeDict)) else {}
            size = {key: value for key, value in size.items() if value is not None}
            if min_pixels is not None:
                size["shortest_edge"] = min_pixels
            if max_pixels is not None:
                size["longest_edge"] = max_pixels
        if size is not None and not isinstance(size, (Mapping, SizeDict)):
            raise ValueError(
                f"size must be {{'shortest_edge': min_pixels, 'longest_edge': max_pixels}} (pixel counts, not a side "
                f"length), got {size!r}"
            )
        if isinstance(size, Mapping) and not isinstance(size, SizeDict):
            unknown = sorted(set(size) - {"shortest_edge", "longest_edge"})
            if unknown or not {"shortest_edge", "longest_edge"} <= set(size):
                raise ValueError(
                    f"size must be {{'shortest_edge': min_pixels, 'longest_edge': max_pixels}} (pixel counts), got "
                    f"{dict(size)}"
                )
        kwargs = super()._standardize_kwargs(size=size, **kwargs)
        geometry = {}
        for name in ("patch_size", "merge_size", "temporal_patch_size"):
            if kwargs.get(name) is not None:
                geometry[name] = kwargs[name] = check_positive_int(name, kwargs[name])
        factor = geometry.get("patch_size", self.patch_size) * geometry.get("merge_size", self.merge_size)
        size = kwargs.get("size")
        if size is not None:
            check_pixel_range(size.shortest_edge, size.longest_edge, factor)
        return kwargs

    # ----- images -----------------------------------------------------------------------------------------------
    def _finish_frame(self, frame: np.ndarray, height: int, width: int, options: dict) -> np.ndarray:
        """Resize one (C, H, W) frame to (height, width) (when do_resize), rescale and normalise it."""
        if options["do_resize"]:
            frame = self.resize(frame, size=SizeDict(height=height, width=width), resample=options["resample"])
        if options["do_rescale"]:
            frame = self.rescale(frame, options["rescale_factor"])
        if options["do_normalize"]:
            frame = self.normalize(frame, options["image_mean"], options["image_std"])
        return frame

    def _target_size(self, height: int, width: int, min_pixels: int, max_pixels: int, options: dict):
        factor = options["patch_size"] * options["merge_size"]
        if not options["do_resize"]:
            if height % factor or width % factor:
                raise ValueError(
                    f"with do_resize=False every image must already have sides that are multiples of {factor} "
                    f"(patch_size x merge_size); got {height}x{width}"
                )
            return height, width
        return smart_resize(height, width, factor, min_pixels, max_pixels)

    def _preprocess(self, images: list[np.ndarray], return_tensors=None, **options) -> BatchFeature:
        size = options["size"]
        all_patches, grids = [], []
        for image in images:  # each (C, H, W)
            height, width = self._target_size(*image.shape[-2:], size.shortest_edge, size.longest_edge, options)
            frame = self._finish_frame(image, height, width, options)
            patches, grid = patchify_frames(
                frame[None], options["patch_size"], options["merge_size"], options["temporal_patch_size"]
            )  # (1, C, H, W) -> (h * w, C * tp * p * p), an image is one temporal patch
            all_patches.append(patches)
            grids.append(grid)
        data = {"pixel_values": np.concatenate(all_patches, axis=0), "image_grid_thw": np.array(grids, dtype=np.int64)}
        return BatchFeature(data=data, tensor_type=return_tensors)

    # ----- videos -----------------------------------------------------------------------------------------------
    def __call__(self, images=None, videos=None, **kwargs) -> BatchFeature:
        """``images`` and / or ``videos``; the outputs of both together."""
        if images is None and videos is None:
            raise ValueError(f"{type(self).__name__} needs images= or videos=")
        if videos is None:
            return self.preprocess(images, **kwargs)
        data = dict(self.preprocess_videos(videos, **kwargs))
        if images is not None:
            data.update(self.preprocess(images, **kwargs))
        return BatchFeature(data=data, tensor_type=kwargs.get("return_tensors"))

    def preprocess_videos(self, videos, **kwargs) -> BatchFeature:
        """``pixel_values_videos`` (all videos' patches concatenated) and ``video_grid_thw`` (one row per video).

        ``videos``: see :func:`split_videos`. Frame options: ``fps`` (with ``video_metadata``, one ``{"fps": ...}``
        or ``VideoMetadata`` per video) or ``num_frames`` sample frames when ``do_sample_frames`` is not False (None,
        the default, samples when either is given; True without either keeps every frame, as transformers does);
        ``video_min_pixels`` / ``video_max_pixels`` bound each frame and ``max_video_tokens`` the whole video. The
        image options (resample, rescale, normalisation, patch geometry) apply to every frame.
        """
        check_view_settings({key: kwargs[key] for key in VIEW_SETTINGS if key in kwargs})
        validate_typed_dict(self.valid_kwargs, {key: value for key, value in kwargs.items() if key != "return_tensors"})
        return_tensors = kwargs.pop("return_tensors", None)
        options = self._merge_and_standardize_kwargs(**kwargs)
        self._validate_preprocess_kwargs(**options)
        factor = options["patch_size"] * options["merge_size"]
        min_pixels, max_pixels = check_pixel_range(options["video_min_pixels"], options["video_max_pixels"], factor, "video_")
        videos = split_videos(videos)
        metadata = _per_video_metadata(options["video_metadata"], len(videos))
        all_patches, grids, kept = [], [], []
        for index, (frames, video_metadata) in enumerate(zip(videos, metadata)):
            indices = self._sampled_indices(len(frames), video_metadata, options)
            frames = [frames[position] for position in indices]
            prepared = [
                self.process_image(frame, do_convert_rgb=options["do_convert_rgb"], do_rescale=options["do_rescale"],
                                   input_data_format=options["input_data_format"])
                for frame in self.fetch_images(frames)
            ]  # fmt: skip
            shapes = {frame.shape[-2:] for frame in prepared}
            if len(shapes) > 1:
                raise ValueError(f"video {index} mixes frame sizes {sorted(shapes)}; every frame of a video needs one size")
            frame_max = video_frame_max_pixels(
                len(prepared), min_pixels, max_pixels, options["max_video_tokens"], factor, options["temporal_patch_size"]
            )
            height, width = self._target_size(*prepared[0].shape[-2:], min_pixels, frame_max, options)
            stacked = np.stack([self._finish_frame(frame, height, width, options) for frame in prepared])  # (T, C, H, W)
            patches, grid = patchify_frames(
                stacked, options["patch_size"], options["merge_size"], options["temporal_patch_size"]
            )  # (ceil(T / tp) * h * w, C * tp * p * p)
            all_patches.append(patches)
            grids.append(grid)
            kept.append(VideoMetadata(total_num_frames=len(videos[index]), fps=_source_fps(video_metadata),
                                      height=prepared[0].shape[-2], width=prepared[0].shape[-1], frames_indices=indices))  # fmt: skip
        data = {
            "pixel_values_videos": np.concatenate(all_patches, axis=0),
            "video_grid_thw": np.array(grids, dtype=np.int64),
        }
        if options["return_metadata"]:
            data["video_metadata"] = kept  # per video: its frame count, rate, size and the frames kept
        return BatchFeature(data=data, tensor_type=return_tensors, skip_tensor_conversion=["video_metadata"])

    def _sampled_indices(self, total_frames: int, video_metadata, options: dict) -> list[int]:
        fps, num_frames, do_sample = options["fps"], options["num_frames"], options["do_sample_frames"]
        if do_sample is False or (do_sample is None and fps is None and num_frames is None):
            return list(range(total_frames))
        return sample_frame_indices(
            total_frames,
            source_fps=_source_fps(video_metadata),
            fps=fps,
            num_frames=num_frames,
            min_frames=check_positive_int("min_frames", options["min_frames"]),
            max_frames=check_positive_int("max_frames", options["max_frames"]),
            temporal_patch_size=options["temporal_patch_size"],
        )

    # ----- counts without pixels ----------------------------------------------------------------------------
    def get_number_of_image_patches(self, height: int, width: int, images_kwargs: dict | None = None) -> int:
        """Patches (``pixel_values`` rows) of a (height, width) image, as transformers' method of that name."""
        options = self._merge_and_standardize_kwargs(**(images_kwargs or {}))
        size, patch_size = options["size"], options["patch_size"]
        resized = smart_resize(height, width, patch_size * options["merge_size"], size.shortest_edge, size.longest_edge)
        return (resized[0] // patch_size) * (resized[1] // patch_size)

    def get_num_of_video_patches(self, num_frames: int, height: int, width: int, videos_kwargs: dict | None = None) -> int:
        """Patches (``pixel_values_videos`` rows) of a video of ``num_frames`` (already sampled) frames."""
        options = self._merge_and_standardize_kwargs(**(videos_kwargs or {}))
        patch_size, temporal = options["patch_size"], options["temporal_patch_size"]
        factor = patch_size * options["merge_size"]
        min_pixels, max_pixels = check_pixel_range(options["video_min_pixels"], options["video_max_pixels"], factor, "video_")
        frame_max = video_frame_max_pixels(num_frames, min_pixels, max_pixels, options["max_video_tokens"], factor, temporal)
        resized = smart_resize(height, width, factor, min_pixels, frame_max)
        return -(-num_frames // temporal) * (resized[0] // patch_size) * (resized[1] // patch_size)


__all__ = ["ZooDynamicResolutionImageProcessor", "sample_frame_indices", "split_videos"]
