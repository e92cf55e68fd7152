"""Input checks shared by every vlmzoo image processor (PIL backend of transformers).

Every image goes through :func:`prepare_image` before transformers' ``PilBackend`` sees it: PIL modes are
converted the right way (16-bit grayscale is scaled to 8 bits instead of clipped; alpha and palette
transparency are composited onto white by transformers), ambiguous modes are refused, and empty images
or arrays of the wrong shape raise ``ValueError`` naming the problem instead of failing deep in numpy.
"""

from __future__ import annotations

import numpy as np
import PIL.Image
import torch
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PILImageResampling

from ..registry import Registry

# PIL mode -> function returning a PIL image in a mode transformers converts correctly to RGB
_PIL_MODE_CONVERTERS: Registry = Registry("image mode")
for _mode in ("RGB", "RGBA", "RGBa", "L", "LA", "La", "1", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
    _PIL_MODE_CONVERTERS.register(_mode)(lambda image: image)


def _sixteen_bit_to_luminance(image: PIL.Image.Image) -> PIL.Image.Image:
    """16-bit grayscale -> 8-bit 'L' by scaling (PIL's own conversion clips everything above 255)."""
    values = np.asarray(image, dtype=np.float64)
    return PIL.Image.fromarray(np.clip(np.round(values / 257.0), 0, 255).astype(np.uint8), mode="L")


for _mode in ("I;16", "I;16L", "I;16B", "I;16N"):
    _PIL_MODE_CONVERTERS.register(_mode)(_sixteen_bit_to_luminance)

SUPPORTED_PIL_MODES = tuple(_PIL_MODE_CONVERTERS.keys())


def _check_array(image: np.ndarray | torch.Tensor) -> None:
    if image.ndim not in (2, 3):
        raise ValueError(
            f"an image array must be (H, W), (H, W, C) or (C, H, W) with C in 1, 3, 4; got shape {tuple(image.shape)}"
        )
    if image.ndim == 3 and image.shape[0] not in (1, 3, 4) and image.shape[-1] not in (1, 3, 4):
        raise ValueError(f"an image array needs 1, 3 or 4 channels first or last; got shape {tuple(image.shape)}")
    if 0 in tuple(image.shape):
        raise ValueError(f"empty image: array of shape {tuple(image.shape)} has no pixels")


def prepare_image(image):
    """Validate one image (PIL, numpy or torch) and convert PIL modes transformers would mishandle."""
    if isinstance(image, PIL.Image.Image):
        if image.width == 0 or image.height == 0:
            raise ValueError(f"empty image: {image.width}x{image.height} pixels")
        if image.mode not in _PIL_MODE_CONVERTERS:
            raise ValueError(
                f"unsupported image mode '{image.mode}' (its value range is ambiguous); convert the image to one of "
                f"{', '.join(SUPPORTED_PIL_MODES)} first, e.g. image.convert('RGB') after scaling its values to 0..255"
            )
        return _PIL_MODE_CONVERTERS.get(image.mode)(image)
    if isinstance(image, (np.ndarray, torch.Tensor)):
        _check_array(image)
        return image
    raise TypeError(f"images must be PIL images, numpy arrays or torch tensors, got {type(image).__name__}")


class ZooClipViewDefaults:
    """The defaults every CLIP-tower image processor shares (LLaVA's): bicubic resize of the shortest edge,
    centre crop to the tower's size, OpenAI CLIP mean/std. Subclasses set what differs (``do_pad``, ...)."""

    resample = PILImageResampling.BICUBIC
    image_mean = OPENAI_CLIP_MEAN
    image_std = OPENAI_CLIP_STD
    size = {"shortest_edge": 336}
    default_to_square = False
    crop_size = {"height": 336, "width": 336}
    do_resize = True
    do_center_crop = True
    do_rescale = True
    do_normalize = True
    do_convert_rgb = True


class ZooImageInputMixin:
    """Runs :func:`prepare_image` on every image before the transformers backend processes it, and gives
    subclasses the standard per-view pipeline (resize, centre crop, rescale, normalise)."""

    def process_image(self, image, *args, **kwargs):
        return super().process_image(prepare_image(image), *args, **kwargs)

    def finish_view(
        self,
        view: np.ndarray,
        *,
        do_resize: bool,
        size,
        resample,
        do_center_crop: bool,
        crop_size,
        do_rescale: bool,
        rescale_factor: float,
        do_normalize: bool,
        image_mean,
        image_std,
        **unused,
    ) -> np.ndarray:
        """Resize, centre-crop, rescale and normalise one (C, H, W) view, each step when enabled."""
        if do_resize:
            view = self.resize(image=view, size=size, resample=resample)
        if do_center_crop:
            view = self.center_crop(view, crop_size)
        if do_rescale:
            view = self.rescale(view, rescale_factor)
        if do_normalize:
            view = self.normalize(view, image_mean, image_std)
        return view
