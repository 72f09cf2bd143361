"""Data stage: which files (sources), how to read them (decode), what the network sees
(preprocess), and a never-raising torch dataset/loader tying them together (dataset).

Each module stands alone and is tested alone; import the public names from here.
"""

from .dataset import ImageDataset, collate, image_key, make_loader
from .decode import BACKGROUND_RGB, MAX_IMAGE_PIXELS, BadImage, decode_image, decode_with_size
from .preprocess import (
    MAX_RESIZED_PIXELS,
    MODES,
    RESIZE_POLICIES,
    Preprocessing,
    channel_order,
    normalize,
    pad_color,
    to_pixels,
)
from .safe_read import MAX_FILE_BYTES, Unreadable, read_file
from .sources import (
    DATA_ROOT_ENV,
    IMAGE_EXTENSIONS,
    ImageSource,
    SourceError,
    caltech_categories,
    find_caltech_root,
    resolve_images,
)

__all__ = [
    "BACKGROUND_RGB",
    "BadImage",
    "DATA_ROOT_ENV",
    "IMAGE_EXTENSIONS",
    "ImageDataset",
    "ImageSource",
    "MAX_FILE_BYTES",
    "MAX_IMAGE_PIXELS",
    "MAX_RESIZED_PIXELS",
    "MODES",
    "Preprocessing",
    "RESIZE_POLICIES",
    "SourceError",
    "Unreadable",
    "caltech_categories",
    "channel_order",
    "collate",
    "decode_image",
    "decode_with_size",
    "find_caltech_root",
    "image_key",
    "make_loader",
    "normalize",
    "pad_color",
    "read_file",
    "resolve_images",
    "to_pixels",
]
