"""Fixed-resolution image processor: LLaVA 1.0 / 1.5 (resize + centre crop, optional pad-to-square).

LLaVA 1.5's ``image_aspect_ratio="pad"`` pads the image to a square filled with the mean colour before
resizing. Built on transformers' ``PilBackend``; pixel-for-pixel equal to transformers'
``LlavaImageProcessorPil`` (``do_pad`` there is ``pad_to_square`` here).
"""

from __future__ import annotations

import numpy as np
from transformers.image_processing_backends import PilBackend
from transformers.image_processing_utils import BatchFeature
from transformers.processing_utils import ImagesKwargs

from .image_processing_common import NORMALISED_CHANNELS, ZooClipViewDefaults, ZooImageInputMixin
from .image_transforms import pad_to_square as pad_image_to_square


class ZooFixedResImagesKwargs(ImagesKwargs, total=False):
    """pad_to_square: pad to a square of the mean colour before resizing (LLaVA 1.5 ``pad``)."""

    pad_to_square: bool


class ZooFixedResImageProcessor(ZooImageInputMixin, ZooClipViewDefaults, PilBackend):
    """Resize the shortest edge, centre-crop, rescale, normalise; optionally pad to square first."""

    valid_kwargs = ZooFixedResImagesKwargs
    model_input_names = ["pixel_values"]

    do_pad = False
    pad_to_square = False

    def _preprocess(
        self, images: list[np.ndarray], return_tensors=None, pad_to_square: bool = False, **kwargs
    ) -> BatchFeature:
        processed = []
        if pad_to_square:
            if kwargs["image_mean"] is None:
                raise ValueError("pad_to_square fills with the mean colour: set image_mean (e.g. CLIP's)")
            # the mean colour, one value per channel (a single image_mean number is every channel's)
            means = np.broadcast_to(np.asarray(kwargs["image_mean"], dtype=np.float64), (NORMALISED_CHANNELS,))
            background = [int(mean * 255) for mean in means]
        for image in images:  # each (C, H, W)
            if pad_to_square:
                image = pad_image_to_square(image, background)
            processed.append(self.finish_view(image, **kwargs))
        return BatchFeature(data={"pixel_values": processed}, tensor_type=return_tensors)
