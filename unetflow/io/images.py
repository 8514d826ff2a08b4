"""Reading single image files and bringing them to the stored (C, Y, X) float32 form.

Conversions are explicit and documented because they change what the network sees: RGB(A) to
one channel uses ITU-R BT.601 luminance (0.299 R + 0.587 G + 0.114 B, alpha dropped), which is
exact for the grey fluorescence images saved as RGBA (R = G = B) in DSB 2018.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from unetflow.io.errors import InputError

LUMINANCE = (0.299, 0.587, 0.114)
TIFF_SUFFIXES = {".tif", ".tiff"}


def read_file(path: str | Path) -> np.ndarray:
    """Read an image file (PNG, JPEG, TIFF) fully, turning any decoder failure into InputError.

    Non-TIFF files are decoded by Pillow, named explicitly: left to choose, imageio tries every
    plugin on a damaged file and then suggests installing a video decoder, which misleads.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file does not exist")
    if path.stat().st_size == 0:
        raise InputError(path, "file is empty (0 bytes)", "a readable PNG/TIFF image")
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            return tifffile.imread(path)
        import imageio.v3 as iio

        return np.asarray(iio.imread(path, plugin="pillow"))
    except InputError:
        raise
    except Exception as exc:  # decoders raise many types for truncated or corrupt files
        raise InputError(path, f"cannot be decoded ({type(exc).__name__}: {exc})", "a readable PNG/TIFF image") from exc


def to_channels_first(image: Any, channels: int, rgb_rule: str, source: str | Path) -> Any:
    """Return ``image`` as (C, Y, X) with ``channels`` channels; works on numpy and dask arrays.

    Accepted input: (Y, X) grey, (Y, X, 3|4) interleaved RGB(A), or (C, Y, X) planar with C <= 4.
    Grey input requested as 3 channels is repeated; RGB(A) requested as 1 channel follows
    ``rgb_rule`` ('luminance' or 'refuse').
    """
    if image.ndim == 2:
        planar = image[None]
    elif image.ndim == 3 and image.shape[-1] in (3, 4) and image.shape[0] > 4:
        planar = image.transpose(2, 0, 1)
    elif image.ndim == 3 and image.shape[0] <= 4:
        planar = image
    else:
        raise InputError(source, f"unsupported image shape {tuple(image.shape)}", "(Y, X), (Y, X, 3|4) or (C<=4, Y, X)")
    n = planar.shape[0]
    if n == channels:
        return planar
    if n == 4 and channels == 3:
        return planar[:3]
    if n in (3, 4) and channels == 1:
        if rgb_rule == "refuse":
            raise InputError(source, f"has {n} channels (RGB/RGBA)", "a grayscale image, or set dataset.rgb_rule: luminance")
        rgb = planar[:3].astype("float32")
        return (LUMINANCE[0] * rgb[0] + LUMINANCE[1] * rgb[1] + LUMINANCE[2] * rgb[2])[None]
    if n == 1 and channels == 3:
        return planar.repeat(3, axis=0) if hasattr(planar, "repeat") else np.repeat(planar, 3, axis=0)
    raise InputError(source, f"has {n} channels", f"{channels} channel(s)")
