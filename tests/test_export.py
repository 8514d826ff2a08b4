"""The bioimage.io model package: checked by bioimage.io's own validator and test_model."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

pytest.importorskip("bioimageio.core", reason="the `export` extra is not installed")

import bioimageio.core  # noqa: E402
from bioimageio.spec import InvalidDescr, load_description  # noqa: E402

from unetflow.cli import main  # noqa: E402
from unetflow.config import stage_settings  # noqa: E402
from unetflow.export import RDF, UNET_CITATION, sha256, input_sizes, crop_edge, validate_package  # noqa: E402
from unetflow.io.errors import InputError  # noqa: E402
from unetflow.model import UNet, save_checkpoint  # noqa: E402
from unetflow.normalize import Normalization  # noqa: E402
from unetflow.store import write_dataset  # noqa: E402


DSB = {"text": "Caicedo et al. 2019, the 2018 Data Science Bowl", "doi": "10.1038/s41592-019-0612-7"}


def _model(path: Path, recipe: Normalization, in_channels: int = 1, n_classes: int = 3) -> UNet:
    torch.manual_seed(0)
    net = UNet(in_channels=in_channels, n_classes=n_classes, depth=2, base_channels=4).eval()
    extra = {"instances": {"grow": 3, "expand": 1}, "target": {"mode": "boundary", "gap": 1, "boundary_width": 1}}
    save_checkpoint(path / "best.pt", net, normalization=recipe.to_json(), recipe={**extra, "object_size": None})
    return net


def _store(path: Path, channels: int = 1) -> tuple[Path, dict[str, np.ndarray]]:
    """Images with an offset and gain far from 0..1, so a missing normalisation would show."""
    rng = np.random.default_rng(1)
    images = {f"im{i}": (300 + 40 * rng.normal(size=(channels, 70, 90))).astype(np.float32) for i in range(3)}
    write_dataset(path, images, split={"train": ["im0"], "val": ["im1"], "test": ["im2"]}, chunk=32)
    return path, images


def _settings(**changes: object) -> str:
    return json.dumps({**stage_settings("export"), "test_size": 48, **changes})


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("padding", ["valid", "same"])
def test_parameterized_input_size_is_exactly_the_nets_valid_inputs(depth: int, padding: str) -> None:
    net = UNet(depth=depth, base_channels=1, padding=padding)
    smallest, step = input_sizes(net)
    valid = [smallest + step * n for n in range(6)]
    for edge in range(1, valid[-1] + 1):
        try:
            out = net.output_size(edge)
        except ValueError:
            assert edge not in valid
            continue
        assert edge in valid, f"{edge} is a valid input the package would refuse"
        assert out == edge - 2 * net.margin  # the output size reference's offset
        assert net(torch.zeros(1, 1, edge, edge)).shape[-1] == out
    assert crop_edge(net, 1) == smallest and crop_edge(net, smallest + 2 * step - 1) == smallest + step


def test_exported_package_passes_bioimageio_test_model(tmp_path: Path) -> None:
    recipe = Normalization("percentile", low=2.0, high=99.0)
    net = _model(tmp_path / "model", recipe)
    data, images = _store(tmp_path / "data.zarr")
    evaluation = tmp_path / "evaluation"
    evaluation.mkdir()
    (evaluation / "summary.json").write_text(
        json.dumps({"split": "test", "images": ["im2"], "mean_ap": 0.625, "pixel_error": 0.0421, "postprocess": {}})
    )
    overlays = tmp_path / "overlays.png"
    overlays.write_bytes(b"\x89PNG not really, copied as given")
    out = tmp_path / "bioimageio"
    assert main([
        "export", str(tmp_path / "model"), str(data), str(out), "--settings", _settings(cite=[DSB]),
        "--evaluation", str(evaluation), "--cover", str(overlays), "--zip", str(tmp_path / "package.zip"),
    ]) == 0  # fmt: skip
    with zipfile.ZipFile(tmp_path / "package.zip") as archive:
        assert sorted(archive.namelist()) == sorted(p.name for p in out.iterdir())

    descr = load_description(tmp_path / "package.zip")  # the zip is a package as bioimage.io reads it
    assert not isinstance(descr, InvalidDescr), descr.validation_summary.format()
    summary = bioimageio.core.test_model(descr)
    assert summary.status == "passed", summary.format()
    tested = {d.name for d in summary.details if d.status == "passed"}
    assert any("torchscript" in name for name in tested) and any("onnx" in name for name in tested)

    rdf = yaml.safe_load((out / RDF).read_text())
    assert rdf["inputs"][0]["preprocessing"] == [
        {"id": "scale_range", "kwargs": {"axes": ["y", "x"], "min_percentile": 2.0, "max_percentile": 99.0}}
    ]
    assert rdf["outputs"][0]["axes"][2]["size"]["offset"] == -2 * net.margin
    assert rdf["cite"] == [UNET_CITATION, DSB]
    assert (out / "cover.png").read_bytes() == overlays.read_bytes()
    readme = (out / "README.md").read_text()
    assert "| mean_ap | 0.6250 |" in readme and "grown by up to 3 pixels" in readme

    # the test output is our net on the test image's centred crop, normalised by its own percentiles
    crop = np.load(out / "test_input.npy")
    edge = crop_edge(net, 48)
    y0, x0 = (70 - edge) // 2, (90 - edge) // 2
    np.testing.assert_array_equal(crop[0], images["im2"][:, y0 : y0 + edge, x0 : x0 + edge])
    low, high = np.percentile(crop, [2.0, 99.0])
    with torch.no_grad():
        expected = torch.softmax(net(torch.from_numpy((crop - low) / (high - low)).float()), dim=1).numpy()
    np.testing.assert_allclose(np.load(out / "test_output.npy"), expected, atol=1e-5)


def test_zscore_recipe_and_several_channels(tmp_path: Path) -> None:
    recipe = Normalization("zscore", mean=(300.0, 290.0), std=(40.0, 35.0))
    _model(tmp_path / "model", recipe, in_channels=2, n_classes=2)
    data, _ = _store(tmp_path / "data.zarr", channels=2)
    out = tmp_path / "bioimageio"
    assert main(["export", str(tmp_path / "model"), str(data), str(out), "--settings", _settings()]) == 0
    rdf = yaml.safe_load((out / RDF).read_text())
    assert rdf["inputs"][0]["preprocessing"] == [
        {"id": "fixed_zero_mean_unit_variance", "kwargs": {"mean": [300.0, 290.0], "std": [40.0, 35.0], "axis": "channel"}}
    ]
    assert (out / "cover.png").read_bytes()[:4] == b"\x89PNG"  # drawn by the export
    assert "Not measured" in (out / "README.md").read_text()


def test_a_package_that_does_not_reproduce_its_output_is_refused(tmp_path: Path) -> None:
    recipe = Normalization("percentile")
    _model(tmp_path / "model", recipe)
    data, _ = _store(tmp_path / "data.zarr")
    out = tmp_path / "bioimageio"
    assert main(["export", str(tmp_path / "model"), str(data), str(out), "--settings", _settings(check=False)]) == 0
    probs = np.load(out / "test_output.npy")
    np.save(out / "test_output.npy", np.roll(probs, 1, axis=1))  # classes swapped: still a valid tensor
    rdf = yaml.safe_load((out / RDF).read_text())
    rdf["outputs"][0]["test_tensor"]["sha256"] = sha256(out / "test_output.npy")
    (out / RDF).write_text(yaml.safe_dump(rdf, sort_keys=False))
    validate_package(out / RDF, test=False)  # the description itself is still valid
    with pytest.raises(InputError, match="test_model failed"):
        validate_package(out / RDF, test=True)


def test_bad_inputs_name_the_file_and_write_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _model(tmp_path / "model", Normalization("percentile"), in_channels=2)
    data, _ = _store(tmp_path / "data.zarr")
    out = tmp_path / "bioimageio"
    args = ["export", str(tmp_path / "model"), str(data), str(out), "--settings", _settings()]
    assert main(args) == 2
    assert "has 1 channel(s)" in capsys.readouterr().err
    assert main([*args, "--evaluation", str(tmp_path)]) == 2
    assert f"{tmp_path}: no summary.json" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nothing"), str(data), str(out)]) == 2
    assert "no model checkpoint" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.zarr", "model"]
