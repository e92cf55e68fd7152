"""AnyRes image processor (LLaVA-NeXT): best-fit grid resolution, tiles plus a base view.

For each image: choose the ``image_grid_pinpoints`` resolution that best fits it, resize keeping the aspect
ratio, pad centred with zeros, cut into ``crop_size`` tiles, and put a base view (the whole image resized
to the tile size) first. ``pixel_values`` is (num_images, max_views, 3, tile, tile), zero-padded on the
view axis; ``image_sizes`` keeps each original (height, width) for the model's spatial unpad. Built on
transformers' ``PilBackend``; pixel-for-pixel equal to transformers' ``LlavaNextImageProcessorPil``.
"""

from __future__ import annotations

import numpy as np
from transformers.image_processing_backends import PilBackend
from transformers.image_processing_utils import BatchFeature, get_patch_output_size
from transformers.image_transforms import divide_to_patches
from transformers.image_utils import ChannelDimension, SizeDict
from transformers.processing_utils import ImagesKwargs

from .image_processing_common import ZooClipViewDefaults, ZooImageInputMixin
from ..geometry import anyres_target_resolution, validate_grid_pinpoints
from .image_transforms import pad_centered


class ZooAnyResImagesKwargs(ImagesKwargs, total=False):
    """image_grid_pinpoints: the candidate [height, width] grid resolutions."""

    image_grid_pinpoints: list[list[int]]


class ZooAnyResImageProcessor(ZooImageInputMixin, ZooClipViewDefaults, PilBackend):
    """LLaVA-NeXT AnyRes tiling: base view + best-fit grid of tower-sized tiles."""

    valid_kwargs = ZooAnyResImagesKwargs
    model_input_names = ["pixel_values", "image_sizes"]

    do_pad = True
    image_grid_pinpoints = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]

    @staticmethod
    def tile_size(size: SizeDict, crop_size: SizeDict | None) -> int:
        if crop_size is not None and crop_size.height:
            return crop_size.height
        return size.height or size.shortest_edge

    def image_views(self, image: np.ndarray, grid_pinpoints, size: SizeDict, tile: int, resample) -> list[np.ndarray]:
        """Base view then row-major tiles of one (C, H, W) image, before per-view normalisation."""
        image_size = image.shape[-2:]
        target = anyres_target_resolution(image_size, grid_pinpoints)
        # the largest (height, width) inside `target` with the image's aspect ratio
        height, width = get_patch_output_size(image, target, input_data_format=ChannelDimension.FIRST)
        resized = self.resize(image=image, size=SizeDict(height=height, width=width), resample=resample)
        tiles = divide_to_patches(pad_centered(resized, target), patch_size=tile)  # row-major
        base_size = SizeDict(height=size.height or size.shortest_edge, width=size.width or size.shortest_edge)
        base = self.resize(image=image, size=base_size, resample=resample)
        return [base] + tiles

    def _preprocess(
        self, images: list[np.ndarray], do_pad=True, return_tensors=None, image_grid_pinpoints=None, **kwargs
    ) -> BatchFeature:
        size, crop_size, resample = kwargs["size"], kwargs["crop_size"], kwargs["resample"]
        tile = self.tile_size(size, crop_size)
        pinpoints = validate_grid_pinpoints(
            self.image_grid_pinpoints if image_grid_pinpoints is None else image_grid_pinpoints, tile
        )
        per_image, image_sizes = [], []
        for image in images:  # each (C, H, W)
            views = [self.finish_view(view, **kwargs) for view in self.image_views(image, pinpoints, size, tile, resample)]
            per_image.append(np.stack(views))  # (num_views, C, tile, tile)
            image_sizes.append(list(image.shape[-2:]))
        if do_pad:
            most = max(len(views) for views in per_image)
            # zero views on the view axis: (num_views, C, t, t) -> (most, C, t, t)
            per_image = [np.pad(v, ((0, most - len(v)), (0, 0), (0, 0), (0, 0))) for v in per_image]
        return BatchFeature(data={"pixel_values": per_image, "image_sizes": image_sizes}, tensor_type=return_tensors)
