"""Input checks shared by every vlmzoo image processor (PIL backend of transformers).

Every image goes through two steps before transformers' ``PilBackend`` sees it:

- :func:`load_image_input` (from ``fetch_images``, before the batch structure is read): file paths, ``pathlib``
  paths, http(s) URLs (with a timeout; a failed fetch raises ``ConnectionError`` naming the URL), base64
  strings and the bytes of an image file are opened as PIL images *in their own mode*, so they take exactly the
  mode handling an opened image takes (transformers' own loader converts to RGB first: black behind transparency,
  16-bit clipped); a string that is none of these is reported as a missing file, naming it; torch tensors become
  numpy arrays; a 2-D (H, W) array becomes a one-channel (1, H, W) image.
- One orientation rule for every input form (:func:`upright`): the EXIF orientation tag is applied, as
  transformers' ``load_image`` does, to opened PIL images as to files, URLs, base64 and bytes, so one photo gives
  the same pixels however it is passed.
- :func:`prepare_image` (per image): PIL modes are converted the right way (16-bit grayscale is scaled to 8 bits
  instead of clipped; alpha and palette transparency are composited onto white by transformers), ambiguous
  modes are refused, and empty images or arrays of the wrong shape raise ``ValueError`` naming the problem.
  Array values are read by dtype, in any byte order (a big-endian array holds the same values): ``uint8`` as is;
  ``uint16`` scaled to 8 bits like a 16-bit PNG; other integers (and ``bool``) must lie in 0..255 (``True`` is
  255); floats in [0, 1] are taken as already scaled and brought to 0..255 before the usual 1/255 rescale (so
  ``x`` as ``uint8`` and ``x / 255`` as float give equal pixel values), floats with values above 1 as 0..255. With ``do_rescale=False`` float arrays pass unchanged
  (transformers' convention for pre-scaled input). NaN, infinite or out-of-range values are refused. A 3-D
  array whose shape reads both as channels-first and channels-last (e.g. a 3 pixel tall (3, W, 3) array, which
  transformers would silently read as channels-first) is refused unless ``input_data_format`` says which.

The options every image processor shares are checked at construction and on every call
(:func:`check_view_settings`): ``resample`` takes a ``PIL.Image.Resampling``, its int value or a name (transformers'
PIL backend resizes with bilinear for any string), ``image_mean`` / ``image_std`` must be one finite number or one
per RGB channel, ``image_std`` positive (a zero gives infinite pixels).
"""

from __future__ import annotations

import base64
import binascii
import difflib
import io
import os

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch
from huggingface_hub.utils import httpx
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ChannelDimension, PILImageResampling

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


# seconds an image URL may take to answer; ZooImageInputMixin.image_fetch_timeout overrides it per processor
IMAGE_FETCH_TIMEOUT = 10.0
# channel counts transformers recognises on either end of a 3-D array
CHANNEL_COUNTS = (1, 3, 4)


class OneChannelFirst(np.ndarray):
    """A (1, H, W) view of a user's 2-D (H, W) array: its channel axis is known to be the first one."""


def channel_layout(image: np.ndarray) -> ChannelDimension | None:
    """The channel axis of a 3-D array when it is certain, ``None`` when the shape allows both readings.

    ``ValueError`` for such ambiguous shapes (e.g. a 1, 3 or 4 pixel tall (H, W, 3) array, which transformers
    would silently read as channels-first) comes from :class:`ZooImageInputMixin` unless ``input_data_format``
    says which it is.
    """
    first, last = image.shape[0] in CHANNEL_COUNTS, image.shape[-1] in CHANNEL_COUNTS
    if first and last:
        return None
    return ChannelDimension.FIRST if first else ChannelDimension.LAST


# a base64 string at least this long that is not an image is reported as bad base64 data, not as a missing file
# (the smallest image files, e.g. a 1-pixel PNG, take about 90 base64 characters)
MIN_BASE64_IMAGE_LENGTH = 64


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _open_image_bytes(data: bytes, source: str) -> PIL.Image.Image:
    """A PIL image decoded from ``data`` (EXIF orientation applied), in its own mode."""
    try:
        with PIL.Image.open(io.BytesIO(data)) as opened:
            opened.load()
            image = PIL.ImageOps.exif_transpose(opened)
            return opened.copy() if image is opened else image
    except PIL.UnidentifiedImageError:
        raise ValueError(f"{source} is not an image in a format PIL can read") from None
    except OSError as error:
        raise ValueError(f"{source} is not a readable image: {error}") from None


def _decode_base64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return b""


def _identifies_as_image(data: bytes) -> bool:
    """Whether PIL recognises ``data`` as an image file (reads the header only)."""
    try:
        with PIL.Image.open(io.BytesIO(data)):
            return True
    except Exception:  # noqa: BLE001 - any failure means "not an image PIL can open"
        return False


def load_image_source(source: str | os.PathLike, timeout: float = IMAGE_FETCH_TIMEOUT) -> PIL.Image.Image:
    """Open a file path, an http(s) URL or a base64 string (``data:image/...;base64,`` prefix optional) as a PIL
    image in its own mode, EXIF orientation applied; :func:`prepare_image` then converts the mode as for any opened
    image.

    A string that is neither an existing file, a URL, a ``data:image/`` URI nor base64 data of an image is reported
    as a missing file (naming the path), whatever characters it holds; long base64 data that is not an image is
    reported as such.
    """
    source = os.fspath(source)
    if source.startswith(("http://", "https://")):
        try:
            response = httpx.get(source, timeout=timeout, follow_redirects=True)
            response.raise_for_status()
        except httpx.HTTPError as error:
            raise ConnectionError(
                f"could not fetch the image at {source} (timeout {timeout:g} s): {error or type(error).__name__}. "
                f"Check the URL, or download the image and pass the file or the opened image."
            ) from None
        return _open_image_bytes(response.content, f"the content of {source}")
    if os.path.isfile(source):
        with open(source, "rb") as file:
            return _open_image_bytes(file.read(), f"the file {source}")
    if os.path.isdir(source):
        raise ValueError(f"image path {source} is a directory; pass one image file per image")
    if not source.strip():
        raise ValueError(
            "an empty string is not an image; pass a file path, an http(s) URL, base64 image data or the opened image"
        )
    if source.startswith("data:image/"):
        data = _decode_base64(source.split(",", 1)[1] if "," in source else "")
        if not data:
            raise ValueError(f"the data URI {_short(source)!r} holds no valid base64 data after its comma")
        return _open_image_bytes(data, "the base64 image data")
    data = _decode_base64(source)
    if data and (_identifies_as_image(data) or len(source) >= MIN_BASE64_IMAGE_LENGTH):
        return _open_image_bytes(data, "the base64 image data")
    looked = "" if os.path.isabs(source) else f" (looked for {_short(os.path.abspath(source))})"
    raise ValueError(
        f"image file {_short(source)!r} does not exist{looked}; pass the path of an existing file, an http(s) URL, "
        f"base64 image data or the opened image"
    )


def load_image_input(image, timeout: float = IMAGE_FETCH_TIMEOUT):
    """One image as given by a user -> PIL image or numpy array, before the batch structure is read.

    Strings and paths are opened in their own mode (see :func:`load_image_source`); tensors become numpy arrays
    (detached, on the CPU, half precision as float32); a 2-D (H, W) array becomes channel-first (1, H, W), which
    transformers reads as grayscale. Anything else that is not an image raises ``TypeError``.
    """
    if isinstance(image, (str, os.PathLike)):
        return load_image_source(image, timeout=timeout)
    if isinstance(image, (bytes, bytearray, memoryview)):
        return _open_image_bytes(bytes(image), "the image data (bytes)")
    if isinstance(image, torch.Tensor):
        tensor = image.detach().cpu()
        if tensor.dtype in (torch.bfloat16, torch.float16):
            tensor = tensor.float()
        image = tensor.numpy()
    if isinstance(image, np.ndarray):
        # (H, W) -> (1, H, W): one channel first, unambiguous for transformers' channel inference
        return image[None].view(OneChannelFirst) if image.ndim == 2 else image
    if isinstance(image, PIL.Image.Image):
        return image
    raise TypeError(
        f"images must be PIL images, numpy arrays, torch tensors, file paths, http(s) URLs, base64 strings or the "
        f"bytes of an image file; got "
        f"{type(image).__name__}"
    )


def _array_to_eight_bit(image: np.ndarray, do_rescale: bool) -> np.ndarray:
    """Bring array values to the 0..255 range transformers' PIL backend expects, deciding by dtype."""
    if image.dtype.byteorder not in ("=", "|"):
        # a non-native byte order (e.g. big-endian '>u2' read from a file) holds the same values: read them natively
        image = image.astype(image.dtype.newbyteorder("="))
    dtype = image.dtype
    if dtype == np.uint8:
        return image
    if dtype == np.bool_:
        return image.astype(np.uint8) * 255
    if dtype == np.uint16:
        # as a 16-bit PNG: 65535 -> 255
        return np.round(image.astype(np.float64) / 257.0).astype(np.uint8)
    if np.issubdtype(dtype, np.integer):
        low, high = int(image.min()), int(image.max())
        if low < 0 or high > 255:
            raise ValueError(
                f"integer image values must lie in 0..255 (uint16 arrays are read as 16-bit); got {dtype} values in "
                f"[{low}, {high}]"
            )
        return image.astype(np.uint8)
    if np.issubdtype(dtype, np.floating):
        if not np.isfinite(image).all():
            raise ValueError("the image array holds NaN or infinite values")
        if not do_rescale:
            return image  # the caller says the values are already scaled (transformers' convention)
        low, high = float(image.min()), float(image.max())
        if low < 0 or high > 255:
            raise ValueError(
                f"float image values must lie in [0, 1] (already scaled) or [0, 255]; got values in [{low:g}, {high:g}]"
            )
        scale = 255.0 if high <= 1.0 else 1.0
        return np.round(image.astype(np.float64) * scale).astype(np.uint8)
    raise TypeError(f"unsupported image array dtype {dtype}; use uint8, uint16 or float values")


# the EXIF tag that says how the stored pixels are turned (1: upright)
EXIF_ORIENTATION = 0x0112


def upright(image: PIL.Image.Image) -> PIL.Image.Image:
    """``image`` turned as its EXIF orientation tag says (``PIL.ImageOps.exif_transpose``, as transformers'
    ``load_image`` does), or ``image`` itself when it has no tag or is upright. Applied to every input form (files,
    URLs, base64, bytes and opened PIL images), so one photo gives the same pixels however it is passed; an image
    turned already (by ``exif_transpose``) has no tag left and is not turned twice."""
    if image.getexif().get(EXIF_ORIENTATION, 1) == 1:
        return image
    return PIL.ImageOps.exif_transpose(image)


def prepare_image(image, do_rescale: bool = True):
    """Validate one image (PIL, numpy or torch) and convert PIL modes and array dtypes transformers would mishandle.

    ``do_rescale``: whether the 1/255 rescale follows; float arrays are brought to 0..255 only then.
    """
    if isinstance(image, (torch.Tensor, str, os.PathLike)) or (isinstance(image, np.ndarray) and image.ndim == 2):
        image = load_image_input(image)
    if isinstance(image, PIL.Image.Image):
        if image.width == 0 or image.height == 0:
            raise ValueError(f"empty image: {image.width}x{image.height} pixels")
        image = upright(image)
        if image.mode not in _PIL_MODE_CONVERTERS:
            raise ValueError(
                f"unsupported image mode '{image.mode}' (its value range is ambiguous); convert the image to one of "
                f"{', '.join(SUPPORTED_PIL_MODES)} first, e.g. image.convert('RGB') after scaling its values to 0..255"
            )
        return _PIL_MODE_CONVERTERS.get(image.mode)(image)
    if isinstance(image, np.ndarray):
        _check_array(image)
        return _array_to_eight_bit(image, do_rescale)
    raise TypeError(f"images must be PIL images, numpy arrays or torch tensors, got {type(image).__name__}")


# resample names an image processor accepts (besides PIL.Image.Resampling members and their int values)
RESAMPLE_NAMES: dict[str, PILImageResampling] = {
    "nearest": PILImageResampling.NEAREST,
    "bilinear": PILImageResampling.BILINEAR,
    "bicubic": PILImageResampling.BICUBIC,
    "lanczos": PILImageResampling.LANCZOS,
    "box": PILImageResampling.BOX,
    "hamming": PILImageResampling.HAMMING,
}
# channels of the images every vlmzoo image processor makes (RGB): image_mean / image_std hold one value per channel
NORMALISED_CHANNELS = 3


def resolve_resample(resample):
    """``resample`` as a ``PIL.Image.Resampling`` member: a member, its int value or its name (``"bicubic"``,
    case-insensitive; see ``RESAMPLE_NAMES``). transformers' PIL backend would resize with bilinear for any string.
    ``None`` stays ``None`` (the backend's default)."""
    if resample is None or isinstance(resample, PILImageResampling):
        return resample
    valid = ", ".join(RESAMPLE_NAMES)
    if isinstance(resample, str):
        key = resample.strip().lower()
        if key not in RESAMPLE_NAMES:
            close = difflib.get_close_matches(key, list(RESAMPLE_NAMES), n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown resample {resample!r}{hint}; valid names: {valid}, or a PIL.Image.Resampling")
        return RESAMPLE_NAMES[key]
    if isinstance(resample, (int, np.integer)) and not isinstance(resample, (bool, np.bool_)):
        try:
            return PILImageResampling(int(resample))
        except ValueError:
            numbers = ", ".join(f"{member.value} ({member.name.lower()})" for member in PILImageResampling)
            raise ValueError(
                f"resample={resample} is no PIL resampling filter; use one of {numbers}, or a name: {valid}"
            ) from None
    raise TypeError(
        f"resample must be a PIL.Image.Resampling, its int value or a name ({valid}); got {_short(repr(resample))}"
    )


def check_normalisation(name: str, values, positive: bool) -> None:
    """``TypeError`` / ``ValueError`` unless ``values`` (``image_mean`` / ``image_std``) is one finite number or one
    per RGB channel; ``positive``: every value must also be above 0 (the pixels are divided by ``image_std``)."""
    if values is None:
        return
    numbers = list(values) if isinstance(values, (list, tuple, np.ndarray)) else [values]
    if isinstance(values, (list, tuple, np.ndarray)) and len(numbers) != NORMALISED_CHANNELS:
        raise ValueError(
            f"{name} must be one number or {NORMALISED_CHANNELS} (one per RGB channel), got {len(numbers)}: "
            f"{_short(repr(list(values)))}"
        )
    for channel, value in enumerate(numbers):
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise TypeError(f"{name} must hold numbers, got {_short(repr(value))} (channel {channel})")
        if not np.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value} for channel {channel}; use the model's own {name}")
        if positive and value <= 0:
            raise ValueError(
                f"{name} must be positive (the pixels are divided by it), got {value} for channel {channel}; use the "
                f"model's own {name} (e.g. CLIP's {list(OPENAI_CLIP_STD)})"
            )


# the image options check_view_settings reads
VIEW_SETTINGS = ("resample", "image_mean", "image_std")


def check_view_settings(settings: dict) -> dict:
    """``settings`` (an image processor's options) with ``resample`` resolved and ``image_mean`` / ``image_std``
    checked; run at construction and on every call."""
    if "resample" in settings:
        settings["resample"] = resolve_resample(settings["resample"])
    check_normalisation("image_mean", settings.get("image_mean"), positive=False)
    check_normalisation("image_std", settings.get("image_std"), positive=True)
    return settings


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
    """Opens paths and URLs in their own mode (:func:`load_image_input`), runs :func:`prepare_image` on every
    image before the transformers backend processes it, and gives subclasses the standard per-view pipeline
    (resize, centre crop, rescale, normalise)."""

    image_fetch_timeout: float = IMAGE_FETCH_TIMEOUT

    def _standardize_kwargs(self, **kwargs) -> dict:
        # transformers runs this at construction and on every call: resample names and bad mean / std are caught
        # in both places (check_view_settings)
        return check_view_settings(super()._standardize_kwargs(**kwargs))

    def preprocess(self, images, *args, **kwargs):
        # the per-call options are checked before transformers' own type validation (which names no fix)
        check_view_settings({key: kwargs[key] for key in VIEW_SETTINGS if key in kwargs})
        if kwargs.get("resample") is not None:
            kwargs["resample"] = resolve_resample(kwargs["resample"])
        return super().preprocess(images, *args, **kwargs)

    def fetch_images(self, images):
        """``images`` with the same nesting, each leaf opened / converted by :func:`load_image_input`."""
        if isinstance(images, (list, tuple)):
            return [self.fetch_images(image) for image in images]
        return load_image_input(images, timeout=self.image_fetch_timeout)

    def process_image(self, image, *args, **kwargs):
        do_rescale = kwargs.get("do_rescale")
        prepared = prepare_image(image, do_rescale=True if do_rescale is None else bool(do_rescale))
        if isinstance(prepared, OneChannelFirst):
            kwargs["input_data_format"] = ChannelDimension.FIRST  # a 2-D array made (1, H, W) here
            prepared = np.asarray(prepared)
        elif isinstance(prepared, np.ndarray) and prepared.ndim == 3 and kwargs.get("input_data_format") is None:
            layout = channel_layout(prepared)
            if layout is None:
                raise ValueError(
                    f"an image array of shape {tuple(prepared.shape)} reads as channels-first and as channels-last; "
                    f"pass input_data_format='channels_first' or 'channels_last' to say which"
                )
            kwargs["input_data_format"] = layout
            prepared = np.asarray(prepared)
        return super().process_image(prepared, *args, **kwargs)

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
