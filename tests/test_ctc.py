"""Cell Tracking Challenge layout: synthetic fixtures written in CTC's folder and file names."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile

from tiny_workflow import TINY_CONFIG, check, prepare, snakemake
from unetflow.cli import main
from unetflow.config import stage_settings
from unetflow.io.errors import InputError
from unetflow.io.sources import read_ctc
from unetflow.store import open_store

SHAPE = (32, 40)


def frame(seed: int) -> np.ndarray:
    """A 16-bit frame using the high range, as CTC's 16-bit microscopy does."""
    return np.random.default_rng(seed).integers(1000, 60000, SHAPE, dtype=np.uint16)


def mask(ids: tuple[int, ...]) -> np.ndarray:
    """Instance mask with the given (non-contiguous) ids in separate boxes, uint16 like CTC's."""
    label = np.zeros(SHAPE, np.uint16)
    for k, object_id in enumerate(ids):
        label[2 + 9 * k : 9 + 9 * k, 3:12 + 3 * k] = object_id
    return label


def write_ctc(root: Path) -> dict[str, np.ndarray]:
    """Two sequences: 01 with 3-digit numbers (gold on t002/t010, silver on t000/t002/t005),
    02 with 4-digit numbers (silver only, on t0001). Returns the mask each sample should get
    under gold_then_silver."""
    for seq, digits, n in (("01", 3, 12), ("02", 4, 3)):
        (root / seq).mkdir(parents=True)
        for t in range(n):
            tifffile.imwrite(root / seq / f"t{t:0{digits}d}.tif", frame(100 * int(seq) + t))
    gold = {"01": {2: (5, 9), 10: (3,)}}
    silver = {"01": {0: (1, 2), 2: (7,), 5: (4, 8, 6)}, "02": {1: (11, 40)}}
    for kind, table in (("GT", gold), ("ST", silver)):
        for seq, frames in table.items():
            digits = 3 if seq == "01" else 4
            (root / f"{seq}_{kind}" / "SEG").mkdir(parents=True)
            for t, ids in frames.items():
                tifffile.imwrite(root / f"{seq}_{kind}" / "SEG" / f"man_seg{t:0{digits}d}.tif", mask(ids))
    (root / "01_GT" / "TRA").mkdir()  # tracking markers are no masks; they only reveal unmasked cells
    markers = np.zeros(SHAPE, np.uint16)
    markers[4, 5], markers[13, 5], markers[30, 35] = 1, 2, 3  # 1, 2 inside the gold objects 5, 9; 3 unmasked
    tifffile.imwrite(root / "01_GT" / "TRA" / "man_track002.tif", markers)
    tifffile.imwrite(root / "01_GT" / "TRA" / "man_track001.tif", markers)  # a frame without a mask: unused
    return {
        "01_t000": mask((1, 2)),
        "01_t002": mask((5, 9)),  # gold wins over silver (7,)
        "01_t005": mask((4, 8, 6)),
        "01_t010": mask((3,)),
        "02_t0001": mask((11, 40)),
    }


def ctc_settings(root: Path, **ctc) -> dict:
    return stage_settings("dataset", json.dumps({"format": "ctc", "path": str(root), "ctc": ctc}))


def test_gold_preferred_per_frame_ids_kept_and_names_unique(tmp_path, caplog):
    expected = write_ctc(tmp_path)
    with caplog.at_level(logging.INFO, logger="unetflow.io.sources"):
        samples = read_ctc(ctc_settings(tmp_path))
    assert "CTC sequence 01: 4 of 12 frames annotated (gold_then_silver)" in caplog.text
    assert "CTC sequence 01: 1 cells marked in the tracking truth have no mask" in caplog.text
    assert "CTC sequence 02: 1 of 3 frames annotated" in caplog.text and "02: 1 cells" not in caplog.text
    assert [s.name for s in samples] == list(expected)  # natural order, only frames with a mask
    for sample in samples:
        assert np.array_equal(sample.label, expected[sample.name]), sample.name
        assert sample.image.shape == (1, *SHAPE) and sample.image.dtype == np.float32
    t002 = samples[1]
    assert t002.sources[1].endswith(os.path.join("01_GT", "SEG", "man_seg002.tif"))
    assert np.array_equal(t002.image[0], frame(102).astype(np.float32))  # 16-bit values kept exactly
    assert sorted(np.unique(samples[2].label)) == [0, 4, 6, 8]  # not relabelled to 1..3


@pytest.mark.parametrize(
    ("ctc", "names"),
    [
        ({"annotation": "gold", "sequences": ["01"]}, ["01_t002", "01_t010"]),
        ({"annotation": "silver"}, ["01_t000", "01_t002", "01_t005", "02_t0001"]),
        ({"sequences": ["02"]}, ["02_t0001"]),
        ({"sequences": [2, 1]}, ["01_t000", "01_t002", "01_t005", "01_t010", "02_t0001"]),  # YAML's 01 is 1
    ],
)
def test_annotation_and_sequence_choice(tmp_path, ctc, names):
    write_ctc(tmp_path)
    samples = read_ctc(ctc_settings(tmp_path, **ctc))
    assert [s.name for s in samples] == names
    if ctc.get("annotation") == "silver":
        assert np.array_equal(samples[1].label, mask((7,)))


def test_sequences_and_frames_sort_naturally(tmp_path):
    for seq in ("10", "9x", "02"):  # "9x" is no sequence name; 02 before 10
        (tmp_path / seq).mkdir()
    for seq in ("10", "02"):
        (tmp_path / f"{seq}_GT" / "SEG").mkdir(parents=True)
        for t in (9, 10, 100):  # unpadded numbers: t9 < t10 < t100
            tifffile.imwrite(tmp_path / seq / f"t{t}.tif", frame(t))
            tifffile.imwrite(tmp_path / f"{seq}_GT" / "SEG" / f"man_seg{t}.tif", mask((t,)))
    names = [s.name for s in read_ctc(ctc_settings(tmp_path))]
    assert names == ["02_t9", "02_t10", "02_t100", "10_t9", "10_t10", "10_t100"]


def run_failing_ingest(root: Path, out: Path, capsys, **ctc) -> str:
    settings = {"format": "ctc", "path": str(root), "ctc": ctc}
    assert main(["ingest", "dataset", str(out), "--settings", json.dumps(settings)]) == 2
    assert not out.exists() and not list(out.parent.glob(f".{out.name}*"))
    return capsys.readouterr().err


@pytest.mark.parametrize(
    ("breakage", "ctc", "names", "message"),
    [
        ("mask_without_frame", {}, "man_seg005.tif", "mask has no frame"),
        ("sequence_without_frames", {}, "man_seg0001.tif", "t0001.tif does not exist"),
        ("shape", {}, "man_seg010.tif", "differs from image shape"),
        ("no_masks", {"annotation": "gold"}, "02_GT/SEG/man_segNNN.tif", "sequence has no masks"),
        ("duplicate_number", {}, "t010.tif", "same frame number 10 as t0010.tif"),
        ("slice_masks_3d", {}, "man_seg_002_004.tif", "3-D CTC datasets are not supported"),
        ("stack_3d", {}, "t005.tif", "3-D CTC datasets are not supported"),
        ("unknown_sequence", {"sequences": ["03"]}, "'03'", "one of the sequences ['01', '02']"),
        ("not_ctc", {}, "", "contains no CTC sequence folders"),
    ],
)
def test_bad_ctc_input_is_named_and_leaves_nothing(tmp_path, capsys, breakage, ctc, names, message):
    root = tmp_path / "ctc"
    write_ctc(root)
    if breakage == "mask_without_frame":
        (root / "01" / "t005.tif").unlink()
    elif breakage == "sequence_without_frames":
        for path in (root / "02").iterdir():
            path.unlink()
    elif breakage == "shape":
        tifffile.imwrite(root / "01_GT" / "SEG" / "man_seg010.tif", np.zeros((8, 8), np.uint16))
    elif breakage == "duplicate_number":
        tifffile.imwrite(root / "01" / "t0010.tif", frame(0))
    elif breakage == "slice_masks_3d":
        tifffile.imwrite(root / "01_GT" / "SEG" / "man_seg_002_004.tif", mask((1,)))
    elif breakage == "stack_3d":
        tifffile.imwrite(root / "01" / "t005.tif", np.stack([frame(i) for i in range(6)]))
    elif breakage == "not_ctc":
        root = tmp_path / "empty"
        (root / "images").mkdir(parents=True)
    err = run_failing_ingest(root, tmp_path / "d.zarr", capsys, **ctc)
    assert message in err and names in err and str(root) in err and "(expected" in err


def test_frame_without_mask_is_skipped_not_an_error(tmp_path):
    write_ctc(tmp_path)
    names = {s.name for s in read_ctc(ctc_settings(tmp_path, annotation="gold", sequences=["01"]))}
    assert names == {"01_t002", "01_t010"}  # 10 unannotated frames of 01 are simply not samples
    with pytest.raises(InputError, match="is a file, not a folder"):
        read_ctc(ctc_settings(tmp_path / "01" / "t000.tif"))


def test_cli_ingests_a_ctc_folder_end_to_end(tmp_path):
    expected = write_ctc(tmp_path / "DIC-C2DH-HeLa")
    config = {**TINY_CONFIG["dataset"], "format": "ctc", "path": str(tmp_path / "DIC-C2DH-HeLa"), "split": {"val_indices": [4]}}
    out = tmp_path / "data.zarr"
    assert main(["ingest", "dataset", str(out), "--settings", json.dumps(config)]) == 0
    group = open_store(out, "dataset")
    meta = group.attrs["unetflow"]
    assert meta["names"] == list(expected) and meta["split"]["val"] == ["02_t0001"]
    for name, label in expected.items():
        assert np.array_equal(group[f"labels/{name}"][:], label)
    sources = [Path(src["path"]).name for src in meta["provenance"]["sources"]]
    assert sources.count("man_seg002.tif") == 1 and "t002.tif" in sources and "t001.tif" not in sources


@pytest.mark.slow
def test_workflow_reads_ctc_files_as_ingest_inputs(tmp_path):
    root = tmp_path / "ctc"
    write_ctc(root)
    workdir = prepare(tmp_path / "work")
    overlay = tmp_path / "ctc.yaml"
    overlay.write_text(json.dumps({"dataset": {"format": "ctc", "path": str(root), "ctc": {"annotation": "gold"}}}))
    out = check(snakemake(workdir, "--dry-run", "--configfile", str(overlay), "--until", "ingest_dataset", limit_s=120))
    assert str(root / "01_GT" / "SEG" / "man_seg010.tif") in out and str(root / "02" / "t0002.tif") in out
    assert "01_ST" not in out  # silver masks are not read with annotation: gold
