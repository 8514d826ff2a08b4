"""Readers for every input layout the ingest stage accepts, each yielding ``Sample`` objects.

Labelled datasets are small enough to read whole; slides are opened lazily as dask arrays (a
BigTIFF through tifffile's zarr interface, a zarr array directly) so that a slide larger than
memory is only ever touched chunk by chunk.

Why this module is longer than the others (~400 lines): it is a set of short readers, one per
``dataset.format`` (and the slide openers), side by side with the ``Sample`` type and the
checks they share; each reader reads in one sitting on its own, and ``DATASET_READERS`` lists
them all in one place.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import dask.array as da
import numpy as np
import tifffile
import zarr

from unetflow.io.errors import InputError
from unetflow.io.images import read_file, to_channels_first
from unetflow.io.labels import to_instances
from unetflow.io.pixel_size import PixelSize, multiscale_pixel_size
from unetflow.io.tiff_metadata import file_pixel_size

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class Sample:
    """One image (raw (C, Y, X), numpy or dask) with its instance labels, if any, and its pixel
    size where the file records one."""

    name: str
    image: Any
    label: np.ndarray | None = None
    sources: list[str] = field(default_factory=list)
    pixel_size: PixelSize | None = None


def _check_same_shape(image: Any, label: np.ndarray, image_src: Any, label_src: Any) -> None:
    if tuple(image.shape[-2:]) != tuple(label.shape):
        raise InputError(
            label_src,
            f"label shape {tuple(label.shape)} differs from image shape {tuple(image.shape[-2:])} of {image_src}",
            "a label image of the same height and width as its image",
        )


def _sample(
    name: str, image: Any, label: Any, settings: dict[str, Any], image_src: Path, label_src: Path,
    pixel_size: PixelSize | None = None,
) -> Sample:
    """Convert one raw image/label pair with the dataset settings and check they fit together.

    ``pixel_size`` defaults to what the image file records (``file_pixel_size``)."""
    image = to_channels_first(np.asarray(image), settings["channels"], settings["rgb_rule"], image_src)
    instances = to_instances(label, settings["labels"], settings["foreground_value"], label_src)
    _check_same_shape(image, instances, image_src, label_src)
    size = pixel_size or file_pixel_size(image_src)
    return Sample(name, image.astype(np.float32), instances, [str(image_src), str(label_src)], size)


def _require_path(value: str | None, what: str, folder: bool = False) -> Path:
    """The configured ``dataset.<what>`` as a Path, refused when unset, missing, or not a folder
    where the format reads a folder tree."""
    if not value:
        raise InputError(None, f"dataset.{what} is not set", "a path for this dataset format")
    path = Path(value)
    if not path.exists():
        raise InputError(path, "does not exist", f"the dataset's {what.replace('_', ' ')}")
    if folder and not path.is_dir():
        raise InputError(path, "is a file, not a folder", f"the folder holding the dataset (dataset.{what})")
    return path


def read_tiff_stack(settings: dict[str, Any]) -> list[Sample]:
    """A multi-page image TIFF and a label TIFF of equal page count (ISBI 2012 train-volume.tif)."""
    image_path = _require_path(settings["path"], "path")
    label_path = _require_path(settings["label_path"], "label_path")
    images, labels = read_file(image_path), read_file(label_path)
    if labels.ndim == 2:  # a single page: the label decides, since an RGB image is 3-D too
        images, labels = images[None], labels[None]
    if len(images) != len(labels):
        raise InputError(label_path, f"has {len(labels)} pages but {image_path} has {len(images)}", "one label page per image page")
    size = file_pixel_size(image_path)  # one for all pages
    return [
        _sample(f"{image_path.stem}_{i:04d}", images[i], labels[i], settings, image_path, label_path, size)
        for i in range(len(images))
    ]


def natural_key(text: str) -> list[Any]:
    """Sort key that orders "2" before "10" (slice numbers are rarely zero-padded)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def natural_sorted(items: Iterable[T], key: Callable[[T], str] = str) -> list[T]:
    """``items`` ordered by ``natural_key`` of their text: every reader orders its samples (and
    DSB masks, whose order gives the instance ids) this way, so "img2" always precedes "img10".
    Ties ("t013", "t0013") fall back to the plain text, so the order never depends on the file system."""
    return sorted(items, key=lambda item: (natural_key(key(item)), key(item)))


def _files_by_stem(root: Path, pattern: str) -> dict[str, Path]:
    """Files matching ``pattern`` keyed by stem; two files with one stem (a.png, a.tif) are an error."""
    found: dict[str, Path] = {}
    for path in sorted(root.glob(pattern)):
        if not path.is_file():
            continue
        if path.stem in found:
            raise InputError(path, f"has the same stem as {found[path.stem]}", f"one file per stem matching {pattern!r}")
        found[path.stem] = path
    return found


def read_pairs(settings: dict[str, Any]) -> list[Sample]:
    """Image/label files in one folder tree, matched by file stem through two globs."""
    root = _require_path(settings["path"], "path", folder=True)
    images = _files_by_stem(root, settings["image_glob"])
    labels = _files_by_stem(root, settings["label_glob"])
    if not images:
        raise InputError(root, f"no files match image_glob {settings['image_glob']!r}", "at least one image")
    if set(images) != set(labels):
        missing = sorted(set(images) - set(labels))
        extra = sorted(set(labels) - set(images))
        raise InputError(
            root,
            f"{len(images)} images but {len(labels)} labels; images without label: {missing[:5]}; "
            f"labels without image: {extra[:5]}",
            "one label per image with the same file stem",
        )
    return [
        _sample(stem, read_file(images[stem]), read_file(labels[stem]), settings, images[stem], labels[stem])
        for stem in natural_sorted(images)
    ]


def _dsb_instances(mask_paths: list[Path], shape: tuple[int, int]) -> np.ndarray:
    """Merge one-mask-per-object PNGs into one instance image, refusing overlapping masks."""
    label = np.zeros(shape, dtype=np.int32)
    for index, mask_path in enumerate(mask_paths, start=1):
        mask = read_file(mask_path)
        mask = mask[..., 0] if mask.ndim == 3 else mask
        if mask.shape != shape:
            raise InputError(mask_path, f"mask shape {mask.shape} differs from image shape {shape}", "masks the size of the image")
        mask = mask > 0
        if np.any(label[mask]):
            raise InputError(mask_path, "mask overlaps an earlier mask of the same image", "non-overlapping object masks")
        label[mask] = index
    return label


def read_dsb(settings: dict[str, Any]) -> list[Sample]:
    """Kaggle Data Science Bowl 2018 layout: ``<id>/images/<id>.png`` and ``<id>/masks/*.png``."""
    root = _require_path(settings["path"], "path", folder=True)
    folders = natural_sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: p.name)
    if not folders:
        raise InputError(root, "contains no sample folders", "<id>/images/<id>.png and <id>/masks/*.png")
    samples = []
    for folder in folders:
        image_path = folder / "images" / f"{folder.name}.png"
        masks = natural_sorted((folder / "masks").glob("*.png"), key=lambda p: p.name)
        if not image_path.is_file():
            raise InputError(image_path, "image file missing", "one image per sample folder")
        if not masks:
            raise InputError(folder / "masks", "no mask PNGs", "one mask PNG per object")
        image = to_channels_first(read_file(image_path), settings["channels"], settings["rgb_rule"], image_path)
        label = _dsb_instances(masks, tuple(image.shape[-2:]))
        samples.append(Sample(folder.name, image.astype(np.float32), label, [str(image_path), str(folder / "masks")]))
    return samples


# Cell Tracking Challenge (celltrackingchallenge.net) names, 2-D datasets: frames <seq>/tNNN.tif,
# masks <seq>_GT/SEG/man_segNNN.tif (gold truth) or <seq>_ST/SEG/man_segNNN.tif (silver truth),
# NNN three or four digits. 3-D datasets annotate single z-slices as man_seg_TTT_ZZZ.tif.
CTC_SEQUENCE = re.compile(r"(\d{2,})(?:_GT|_ST)?")
CTC_FRAME = re.compile(r"t(\d+)\.tiff?")
CTC_MASK = re.compile(r"man_seg(\d+)\.tiff?")
CTC_SLICE_MASK = re.compile(r"man_seg_\d+_\d+\.tiff?")
CTC_ANNOTATION_FOLDERS = {"gold": ("GT",), "silver": ("ST",), "gold_then_silver": ("GT", "ST")}
CTC_LAYOUT = "<seq>/tNNN.tif frames with <seq>_GT/SEG/man_segNNN.tif or <seq>_ST/SEG/man_segNNN.tif masks"
CTC_2D_ONLY = "2-D (Y, X) frames and masks; 3-D CTC datasets are not supported"


def _ctc_numbered(folder: Path, pattern: re.Pattern[str], what: str) -> dict[int, Path]:
    """Files of ``folder`` named like ``pattern`` keyed by frame number (t013 and t0013 are both 13)."""
    found: dict[int, Path] = {}
    for path in natural_sorted(folder.iterdir(), key=lambda p: p.name):
        match = pattern.fullmatch(path.name)
        if not match or not path.is_file():
            continue
        number = int(match.group(1))
        if number in found:
            raise InputError(path, f"has the same frame number {number} as {found[number].name}", f"one {what} per frame number")
        found[number] = path
    return found


def _ctc_sequences(root: Path, selected: list[str | int] | None) -> list[str]:
    """Sequence names (``01``, ``02``, ...) found under ``root`` from their frame or annotation
    folders, all of them or those ``selected`` (an integer matches the name with that value, since
    YAML reads an unquoted 01 as the number 1)."""
    found = {m.group(1) for p in root.iterdir() if p.is_dir() and (m := CTC_SEQUENCE.fullmatch(p.name))}
    if not found:
        raise InputError(root, "contains no CTC sequence folders (01, 02, ...)", CTC_LAYOUT)
    if selected is None:
        return natural_sorted(found)
    chosen = set()
    for want in selected:
        matches = natural_sorted(name for name in found if (name == want if isinstance(want, str) else int(name) == want))
        if len(matches) != 1:
            problem = f"has {'no' if not matches else 'several'} sequence folders for dataset.ctc.sequences entry {want!r}"
            raise InputError(root, f"{problem} {matches or ''}".strip(), f"one of the sequences {natural_sorted(found)}, quoted like \"01\"")
        chosen.add(matches[0])
    return natural_sorted(chosen)


def _ctc_masks(root: Path, sequence: str, annotation: str) -> dict[int, Path]:
    """The mask of every annotated frame of ``sequence``; gold before silver when both are wanted,
    decided per frame, so silver truth fills only the frames that gold truth leaves out."""
    masks: dict[int, Path] = {}
    for kind in CTC_ANNOTATION_FOLDERS[annotation]:
        folder = root / f"{sequence}_{kind}" / "SEG"
        if not folder.is_dir():
            continue
        slices = natural_sorted((p for p in folder.iterdir() if CTC_SLICE_MASK.fullmatch(p.name)), key=lambda p: p.name)
        if slices:
            raise InputError(slices[0], "is a z-slice mask of a 3-D CTC dataset", CTC_2D_ONLY)
        for number, path in _ctc_numbered(folder, CTC_MASK, "mask").items():
            masks.setdefault(number, path)
    return masks


def _ctc_2d(array: np.ndarray, path: Path, what: str) -> np.ndarray:
    if array.ndim != 2:
        raise InputError(path, f"{what} has shape {array.shape}, a stack or multi-channel image", CTC_2D_ONLY)
    return array


def _ctc_uncovered_cells(mask_path: Path, label: np.ndarray) -> int:
    """Cells that the tracking truth beside a mask (``../TRA/man_trackNNN.tif``, which marks every
    cell) places where the mask has no object. CTC's gold segmentation truth may cover only some
    cells of a frame, and a cell without a mask is trained as background, so this is worth a warning."""
    track_path = mask_path.parent.parent / "TRA" / mask_path.name.replace("man_seg", "man_track", 1)
    if not track_path.is_file():
        return 0
    markers = read_file(track_path)
    if markers.shape != label.shape:
        return 0
    return len(np.setdiff1d(np.unique(markers[markers > 0]), np.unique(markers[(markers > 0) & (label > 0)])))


def read_ctc(settings: dict[str, Any]) -> list[Sample]:
    """Cell Tracking Challenge 2-D sequences: every frame that has a mask is one sample.

    CTC annotates only some frames of a sequence, so a frame without a mask is skipped (logged),
    while a mask whose frame is missing, a selected sequence without any mask, mismatched shapes
    and 3-D data are errors. Masks are instance ids already and are kept as they are (ids need not
    be contiguous; ``dataset.labels`` does not apply). Samples are named ``<seq>_<frame stem>``
    (``01_t013``), unique across sequences.
    """
    root = _require_path(settings["path"], "path", folder=True)
    annotation = settings["ctc"]["annotation"]
    instance_settings = {**settings, "labels": "instance"}
    samples = []
    for sequence in _ctc_sequences(root, settings["ctc"]["sequences"]):
        uncovered = 0
        frame_folder = root / sequence
        frames = _ctc_numbered(frame_folder, CTC_FRAME, "frame") if frame_folder.is_dir() else {}
        masks = _ctc_masks(root, sequence, annotation)
        if not masks:
            looked = " or ".join(f"{sequence}_{kind}/SEG/man_segNNN.tif" for kind in CTC_ANNOTATION_FOLDERS[annotation])
            raise InputError(frame_folder, f"sequence has no masks {looked} (dataset.ctc.annotation: {annotation})",
                             "at least one annotated frame per sequence, or leave the sequence out with dataset.ctc.sequences")
        for number in sorted(masks):
            mask_path = masks[number]
            if number not in frames:
                expected_frame = frame_folder / mask_path.name.replace("man_seg", "t", 1)
                raise InputError(mask_path, f"mask has no frame: {expected_frame} does not exist", "the frame of every mask")
            frame_path = frames[number]
            image = _ctc_2d(read_file(frame_path), frame_path, "frame")
            label = _ctc_2d(read_file(mask_path), mask_path, "mask")
            samples.append(_sample(f"{sequence}_{frame_path.stem}", image, label, instance_settings, frame_path, mask_path))
            uncovered += _ctc_uncovered_cells(mask_path, label)
        log.info("CTC sequence %s: %d of %d frames annotated (%s)", sequence, len(masks), len(frames), annotation)
        if uncovered:
            log.warning("CTC sequence %s: %d cells marked in the tracking truth have no mask in their annotated frame "
                        "and are trained as background (gold segmentation truth may cover only some cells)", sequence, uncovered)
    return samples


#: axes a 2-D segmentation can drop when they have one element (time, depth, tifffile's generic
#: image-sequence axes), but not when they have more
SINGLETON_AXES = set("tzqi")
CHANNEL_AXES = set("cs")  # channels, and interleaved samples (RGB)


def planar_by_axes(array: da.Array, axes: Sequence[str], source: Any) -> da.Array:
    """``array`` as (C, Y, X) or (Y, X) by its named ``axes`` (OME/tifffile letters, any case).

    Singleton t/z axes are dropped; a longer one is a 3-D or time-lapse image, which a 2-D model
    cannot segment as one image, so it is refused rather than read as channels.
    """
    axes = [a.lower() for a in axes]
    described = f"axes {''.join(axes).upper()} and shape {tuple(array.shape)}"
    if len(axes) != array.ndim or "y" not in axes or "x" not in axes:
        raise InputError(source, f"has {described}", "named Y and X axes (a 2-D image)")
    unknown = set(axes) - SINGLETON_AXES - CHANNEL_AXES - {"y", "x"}
    deep = [a for a, n in zip(axes, array.shape) if a in SINGLETON_AXES and n > 1]
    if unknown or deep:
        raise InputError(
            source,
            f"3-D/time-lapse input: {described}",
            "a 2-D (C)YX image; select a plane/frame first (e.g. a max projection, or one z-slice or time point)",
        )
    channels = [i for i, a in enumerate(axes) if a in CHANNEL_AXES and array.shape[i] > 1]
    if len(channels) > 1:
        raise InputError(source, f"has several channel axes: {described}", "one channel (C or S) axis")
    keep = channels + [axes.index("y"), axes.index("x")]
    drop = tuple(i for i in range(array.ndim) if i not in keep)
    squeezed = array.squeeze(axis=drop) if drop else array
    order = sorted(keep)  # positions of the kept axes in the squeezed array, in that order
    return squeezed.transpose([order.index(i) for i in keep])


def _zarr_image_node(path: Path) -> tuple[zarr.Array, list[str] | None, dict[str, Any] | None]:
    """The full-resolution array behind ``path``, its axis names (None if unnamed) and NGFF multiscale."""
    try:
        node = zarr.open(str(path), mode="r")
    except Exception as exc:
        raise InputError(path, f"cannot be opened as zarr ({type(exc).__name__}: {exc})", "a zarr array or OME-Zarr image") from exc
    multiscale = None
    if isinstance(node, zarr.Group):
        attrs = node.attrs.asdict()
        multiscales = attrs.get("ome", attrs).get("multiscales")
        if multiscales:
            multiscale = multiscales[0]
            node = node[multiscale["datasets"][0]["path"]]
        else:
            arrays = list(node.array_keys())
            if len(arrays) != 1:
                raise InputError(path, f"group holds {len(arrays)} arrays and no OME multiscales", "exactly one array")
            node = node[arrays[0]]
    if multiscale is not None:
        axes = [a["name"] if isinstance(a, dict) else a for a in multiscale["axes"]]
    else:
        names = getattr(node.metadata, "dimension_names", None)
        axes = list(names) if names and all(names) else None
    return node, axes, multiscale


def open_zarr_image(path: str | Path) -> da.Array:
    """Lazily open a zarr array, a zarr group holding one, or an OME-Zarr image (level 0).

    Named axes (OME ``axes``, zarr v3 ``dimension_names``) decide the layout (``planar_by_axes``);
    an array without names is taken as (Y, X) or (C, Y, X) after dropping leading singleton axes.
    """
    path = Path(path)
    node, axes, _ = _zarr_image_node(path)
    array = da.from_zarr(node)
    if axes is not None:
        return planar_by_axes(array, axes, path)
    while array.ndim > 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim > 3:
        raise InputError(path, f"array of shape {tuple(array.shape)} has no axis names", "(Y, X) or (C, Y, X), or OME axes")
    return array


def zarr_pixel_size(path: str | Path) -> PixelSize | None:
    """The pixel size an OME-Zarr image records (None for plain zarr arrays)."""
    _, _, multiscale = _zarr_image_node(Path(path))
    return multiscale_pixel_size(multiscale) if multiscale else None


def open_tiff_lazily(path: str | Path) -> da.Array:
    """Open a (Big)TIFF, tiled or pyramidal, through tifffile's zarr interface without reading it.

    The first series' axes (tifffile reads them from OME-XML, ImageJ or the page layout: YX, YXS,
    CYX, ZCYX, TYX ...) decide the layout (``planar_by_axes``); a pyramid's level 0 is read.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file does not exist", "a TIFF/BigTIFF slide")
    try:
        series = tifffile.TiffFile(path).series[0]  # the zarr store keeps the file open
        node = zarr.open(series.aszarr(level=0), mode="r")
    except Exception as exc:
        raise InputError(path, f"cannot be read as TIFF ({type(exc).__name__}: {exc})", "a readable (Big)TIFF") from exc
    return planar_by_axes(da.from_zarr(node), series.axes, path)


def read_zarr_dataset(settings: dict[str, Any]) -> list[Sample]:
    """One image from an existing zarr/OME-Zarr store and its label array (``label_path``)."""
    path = _require_path(settings["path"], "path")
    image = to_channels_first(open_zarr_image(path), settings["channels"], settings["rgb_rule"], path)
    label_path = _require_path(settings["label_path"], "label_path")  # training needs labels
    label = to_instances(np.asarray(open_zarr_image(label_path)).squeeze(), settings["labels"], settings["foreground_value"], label_path)
    _check_same_shape(image, label, path, label_path)
    return [Sample(path.stem.split(".")[0], image.astype(np.float32), label, [str(path)], zarr_pixel_size(path))]


DATASET_READERS = {"tiff_stack": read_tiff_stack, "pairs": read_pairs, "dsb": read_dsb, "ctc": read_ctc, "zarr": read_zarr_dataset}
