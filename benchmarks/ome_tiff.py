"""Benchmark: memory and time of the OME-TIFF export, tile by tile vs whole arrays.

``write_ome_tiff`` streams each series level from the OME-Zarr prediction as bands of 512-row
tiles (one channel at a time). The baseline writes the same file (same tiles, compression and
SubIFD pyramids) from whole in-memory arrays, the obvious ``tifffile.imwrite`` of each level. Peak
memory is what ``tracemalloc`` sees allocated during the write (numpy reports its buffers to it),
the prediction's creation excluded.

    PYTHONPATH=. python benchmarks/ome_tiff.py --size 4096
"""

from __future__ import annotations

import argparse
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import tifffile

from unetflow.io.ome_tiff import SERIES, TILE, _ome_metadata, write_ome_tiff
from unetflow.io.ome_zarr import class_names, create_prediction, open_ome_image
from unetflow.io.pixel_size import PixelSize


def make_prediction(path: Path, size: int, chunk: int, levels: int) -> Path:
    root = create_prediction(path, n_classes=3, height=size, width=size, chunk=chunk, levels=levels, dtype="float32",
                             attrs={}, pixel_size=PixelSize(0.5, 0.5, "micrometer"))
    rng = np.random.default_rng(0)
    for level in range(levels):
        for prefix, high in (("", None), ("labels/semantic/", 3), ("labels/instances/", 10**6)):
            array = root[f"{prefix}{level}"]
            for y0 in range(0, array.shape[-2], chunk):  # chunk rows, so creation stays small too
                rows = (*array.shape[:-2], min(chunk, array.shape[-2] - y0), array.shape[-1])
                band = rng.random(rows, dtype=np.float32) if high is None else rng.integers(0, high, rows)
                array[..., y0 : y0 + rows[-2], :] = band
    return path


def whole_array_baseline(prediction: Path, out: Path) -> None:
    image = open_ome_image(prediction)
    with tifffile.TiffWriter(out, bigtiff=True, ome=True) as tif:
        for name, label, dtype in SERIES:
            levels = [a[...].astype(dtype) for a in (image.label(label) if label else image).levels]
            axes = "CYX" if label is None else "YX"
            meta = _ome_metadata(name, axes, image.pixel_size, class_names(3) if label is None else None)
            tif.write(levels[0], tile=(TILE, TILE), compression="zlib", subifds=len(levels) - 1, metadata=meta)
            for data in levels[1:]:
                tif.write(data, tile=(TILE, TILE), compression="zlib", subfiletype=1, metadata=None)


def measure(fn, *args) -> tuple[float, float]:
    tracemalloc.start()
    start = time.perf_counter()
    fn(*args)
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return seconds, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096, help="prediction edge in pixels")
    parser.add_argument("--chunk", type=int, default=1024, help="zarr chunk edge of the prediction")
    parser.add_argument("--levels", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        prediction = make_prediction(Path(tmp) / "p.ome.zarr", args.size, args.chunk, args.levels)
        rows = [
            ("whole arrays (baseline)", *measure(whole_array_baseline, prediction, Path(tmp) / "b.ome.tif")),
            ("write_ome_tiff (tiles)", *measure(write_ome_tiff, prediction, Path(tmp) / "t.ome.tif")),
        ]
        for series in range(3):
            for level in range(args.levels):
                a = tifffile.imread(Path(tmp) / "b.ome.tif", series=series, level=level)
                b = tifffile.imread(Path(tmp) / "t.ome.tif", series=series, level=level)
                assert np.array_equal(a, b), (series, level)
        megabytes = (Path(tmp) / "t.ome.tif").stat().st_size / 2**20
    print(f"prediction {args.size}^2, 3 classes float32 + 2 label images, {args.levels} levels, file {megabytes:.0f} MiB")
    print(f"{'writer':<26}{'seconds':>9}{'peak MiB':>10}{'peak ratio':>12}")
    base_peak = rows[0][2]
    for name, seconds, peak in rows:
        print(f"{name:<26}{seconds:>9.1f}{peak:>10.0f}{peak / base_peak:>12.3f}")
    print("outputs identical per series and level")


if __name__ == "__main__":
    main()
