"""References of the Qwen2-VL processing tests: transformers' own code, run offline without torchvision.

- Images: transformers' ``Qwen2VLImageProcessorPil`` as it is.
- Processor: transformers' ``Qwen2VLProcessor`` cannot be built here with ``video_processor=None`` (its class check
  looks the ``VideoProcessorMixin`` up in the video-processor mapping, which is a dummy without torchvision), so
  :class:`ImageOnlyQwen2VLProcessor` is the same class with an ``__init__`` that takes no video processor; every
  method (placeholder expansion, ``mm_token_type_ids``, ``_get_num_multimodal_tokens``) is transformers'.
- Videos: ``Qwen2VLVideoProcessor``'s module imports torchvision, so its ``sample_frames``, ``resize`` (the
  per-frame pixel cap) and ``patchify`` methods and its ``smart_resize`` are read from the installed transformers
  source and compiled here into :class:`ReferenceVideoProcessor` (transformers' code, not a copy in the repository),
  over a base whose frame resize is ``Qwen2VLImageProcessorPil``'s PIL resize (transformers resizes video frames
  with torchvision, whose pixels differ slightly). Rescale and normalisation are the PIL image processor's.
  :class:`ReferenceVideoAdapter` puts that pipeline behind the ``video_processor`` interface ``ProcessorMixin`` calls.
"""

from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np
import PIL.Image
import torch
import transformers
from transformers import Qwen2VLProcessor
from transformers.image_processing_backends import PilBackend
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import PILImageResampling, SizeDict
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.video_utils import VideoMetadata, make_batched_videos

VIDEO_SOURCE = Path(transformers.__file__).parent / "models" / "qwen2_vl" / "video_processing_qwen2_vl.py"
REFERENCE_METHODS = ("sample_frames", "resize", "patchify")


class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
    """transformers' ``Qwen2VLProcessor`` without the video-processor argument (see the module docstring)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                         chat_template=chat_template)  # fmt: skip


class _FrameResize:
    """The base of the compiled reference: ``resize(image=(B, T, C, H, W) uint8 tensor, size, resample)``, each frame
    through ``Qwen2VLImageProcessorPil``'s PIL resize."""

    def __init__(self, **settings):
        self.pil = Qwen2VLImageProcessorPil()
        self.num_frames = None
        self.fps = None
        self.temporal_patch_size = settings.get("temporal_patch_size", 2)
        self.min_frames = settings.get("min_frames", 4)
        self.max_frames = settings.get("max_frames", 768)
        self.max_video_tokens = settings.get("max_video_tokens", 128000)

    def resize(self, image, size, resample, **kwargs):
        frames = [
            PilBackend.resize(self.pil, image=frame.numpy(), size=size, resample=resample)
            for frame in image.reshape(-1, *image.shape[2:])
        ]  # each (C, H', W')
        return torch.from_numpy(np.stack(frames)).reshape(*image.shape[:2], *frames[0].shape)


def _compile_reference() -> type:
    tree = ast.parse(VIDEO_SOURCE.read_text())
    smart_resize = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "smart_resize"]
    (video_class,) = [node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "Qwen2VLVideoProcessor"]
    methods = [node for node in video_class.body if isinstance(node, ast.FunctionDef) and node.name in REFERENCE_METHODS]
    assert len(smart_resize) == 1 and len(methods) == len(REFERENCE_METHODS), "transformers' video processor changed"
    reference = ast.ClassDef(
        name="ReferenceVideoProcessor", bases=[ast.Name("_FrameResize", ast.Load())], keywords=[], body=methods,
        decorator_list=[],
    )  # fmt: skip
    module = ast.fix_missing_locations(ast.Module(body=[*smart_resize, reference], type_ignores=[]))
    namespace = {"math": math, "torch": torch, "SizeDict": SizeDict, "VideoMetadata": VideoMetadata,
                 "PILImageResampling": PILImageResampling, "_FrameResize": _FrameResize}  # fmt: skip
    exec(compile(module, str(VIDEO_SOURCE), "exec"), namespace)  # noqa: S102 - transformers' own installed source
    return namespace["ReferenceVideoProcessor"]


ReferenceVideoProcessor = _compile_reference()


def reference_video(
    frames: np.ndarray,
    *,
    min_pixels: int = 128 * 28 * 28,
    max_pixels: int = 768 * 28 * 28,
    source_fps: float | None = None,
    fps: float | None = None,
    num_frames: int | None = None,
    max_video_tokens: int | None = None,
    sample: bool = False,
    **settings,
) -> tuple[torch.Tensor, list[int]]:
    """transformers' video pipeline on a (T, H, W, C) uint8 video: (patches, [t, h, w])."""
    reference = ReferenceVideoProcessor(**settings)
    if sample:
        metadata = VideoMetadata(total_num_frames=len(frames), fps=source_fps)
        frames = frames[reference.sample_frames(metadata, fps=fps, num_frames=num_frames).numpy()]
    video = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)[None]  # (1, T, C, H, W)
    resized = reference.resize(
        video, size=SizeDict(shortest_edge=min_pixels, longest_edge=max_pixels), resample=PILImageResampling.BICUBIC,
        factor=28, temporal_factor=reference.temporal_patch_size, cap_pixels_per_frame=max_video_tokens is not None,
        max_video_tokens=max_video_tokens,
    )  # fmt: skip
    pil = reference.pil
    normalised = [pil.normalize(pil.rescale(frame.numpy(), 1 / 255), pil.image_mean, pil.image_std) for frame in resized[0]]
    stacked = torch.from_numpy(np.stack(normalised).astype(np.float32))[None]  # (1, T, C, H, W)
    patches, grid_t, grid_h, grid_w = reference.patchify(stacked, patch_size=14, merge_size=2, temporal_patch_size=2)
    return patches[0], [grid_t, grid_h, grid_w]


class ReferenceVideoAdapter:
    """The ``video_processor`` ``ProcessorMixin`` calls: :func:`reference_video` per video (``do_sample_frames`` with
    ``fps`` and ``video_metadata``, or ``num_frames``, as ``BaseVideoProcessor`` reads them)."""

    merge_size = 2
    valid_kwargs = None
    model_input_names = ["pixel_values_videos", "video_grid_thw"]

    def __call__(self, videos, do_sample_frames=False, fps=None, num_frames=None, video_metadata=None,
                 return_tensors=None, **unused):  # fmt: skip
        videos = make_batched_videos(videos)
        metadata = video_metadata if isinstance(video_metadata, list) else [video_metadata] * len(videos)
        patches, grids = [], []
        for video, meta in zip(videos, metadata):
            video = np.stack([np.asarray(frame) for frame in video]) if isinstance(video, list) else np.asarray(video)
            source_fps = None if meta is None else meta["fps"]
            flat, grid = reference_video(video, source_fps=source_fps, fps=fps, num_frames=num_frames,
                                         sample=bool(do_sample_frames))  # fmt: skip
            patches.append(flat)
            grids.append(grid)
        data = {"pixel_values_videos": torch.cat(patches), "video_grid_thw": torch.tensor(grids)}
        return BatchFeature(data, tensor_type=return_tensors)


def video_capable_reference(image_processor, tokenizer, chat_template):
    """transformers' ``Qwen2VLProcessor`` (image-only construction) with the reference video pipeline attached."""
    processor = ImageOnlyQwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template)
    processor.video_processor = ReferenceVideoAdapter()
    return processor


def random_image(height: int, width: int, mode: str = "RGB", seed: int = 0) -> PIL.Image.Image:
    rng = np.random.default_rng(seed)
    return PIL.Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).convert(mode)


def random_video(frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """A (T, H, W, C) uint8 video of random frames."""
    return np.random.default_rng(seed).integers(0, 256, (frames, height, width, 3), dtype=np.uint8)
