"""Square-resize image processor: BLIP / BLIP-2 / InstructBLIP (resize straight to the tower's size, no crop).

Every image is resized (bicubic) to ``size["height"] x size["width"]`` whatever its aspect ratio, then rescaled
and normalised with the OpenAI CLIP mean/std, as the BLIP papers' evaluation transform does. Built on
transformers' ``PilBackend``; pixel-for-pixel equal to transformers' ``BlipImageProcessorPil``.
"""

from __future__ import annotations

import numpy as np
from transformers.image_processing_backends import PilBackend
from transformers.image_processing_utils import BatchFeature

from .image_processing_common import ZooClipViewDefaults, ZooImageInputMixin


class ZooResizeImageProcessor(ZooImageInputMixin, ZooClipViewDefaults, PilBackend):
    """Resize to a fixed (height, width), rescale, normalise; no centre crop."""

    model_input_names = ["pixel_values"]

    size = {"height": 224, "width": 224}
    default_to_square = True
    do_center_crop = False
    crop_size = None

    def _preprocess(self, images: list[np.ndarray], return_tensors=None, **kwargs) -> BatchFeature:
        processed = [self.finish_view(image, **kwargs) for image in images]  # each (C, H, W)
        return BatchFeature(data={"pixel_values": processed}, tensor_type=return_tensors)


__all__ = ["ZooResizeImageProcessor"]
