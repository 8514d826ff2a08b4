"""Validation of written OME-Zarr images against the NGFF 0.5 specification (shared by the tests).

Two independent checks, since neither alone catches everything:

* the official 0.5 JSON schemas (``tests/ngff_schemas_0.5``, strict variants: multiscale names,
  types and metadata, label colours) on the attributes of the image and of each label image;
  these check the ``omero`` block (windows, colours) that ome-zarr-models leaves alone;
* ome-zarr-models' v05 models, which also open the arrays and check that they agree with the
  metadata (dimensions, one array per dataset path, a labels group listing its label images).

Beyond both: NGFF 0.5 keeps ``version`` only directly under ``ome`` (lenient readers accept it
elsewhere, e.g. inside ``image-label`` as in 0.4), and space units must be UDUNITS-2 lengths.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import zarr
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from unetflow.io.pixel_size import NGFF_SPACE_UNITS

SCHEMAS = Path(__file__).parent / "ngff_schemas_0.5"
BASE = "https://ngff.openmicroscopy.org/0.5/schemas/"


@cache
def _validator(name: str) -> Draft202012Validator:
    contents = {path.name: json.loads(path.read_text()) for path in SCHEMAS.glob("*.schema")}
    registry = Registry().with_resources(
        (schema["$id"], Resource.from_contents(schema, default_specification=DRAFT202012)) for schema in contents.values()
    )
    return Draft202012Validator(contents[name], registry=registry)


def _schema_errors(attrs: dict[str, Any], name: str, where: str) -> list[str]:
    return [f"{where}: {'/'.join(map(str, e.absolute_path))}: {e.message}" for e in _validator(name).iter_errors(attrs)]


def _nested_versions(ome: dict[str, Any], where: str) -> list[str]:
    problems = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "version" and path:
                    problems.append(f"{where}: 'version' at ome/{path}; NGFF 0.5 keeps it only at ome/version")
                walk(value, f"{path}/{key}" if path else key)
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{path}/{i}")

    walk(ome, "")
    return problems


def _units(ome: dict[str, Any], where: str) -> list[str]:
    return [
        f"{where}: axis {axis['name']} has unit {axis['unit']!r}, not a UDUNITS-2 length"
        for multiscale in ome.get("multiscales", [])
        for axis in multiscale["axes"]
        if axis.get("type") == "space" and "unit" in axis and axis["unit"] not in NGFF_SPACE_UNITS
    ]


def ngff_problems(path: str | Path) -> list[str]:
    """Everything in the OME-Zarr image at ``path`` that breaks NGFF 0.5 (empty when valid)."""
    from ome_zarr_models.v05 import Image, ImageLabel, Labels

    group = zarr.open_group(str(path), mode="r")
    problems: list[str] = []
    images = [(group, "strict_image.schema", str(path))]
    if "labels" in group:
        for name in group["labels"].attrs["ome"]["labels"]:
            images.append((group[f"labels/{name}"], "strict_label.schema", f"{path}/labels/{name}"))
    for node, schema, where in images:
        attrs = node.attrs.asdict()
        problems += _schema_errors(attrs, schema, where)
        if schema == "strict_label.schema":  # a label image is an image too
            problems += _schema_errors(attrs, "strict_image.schema", where)
        problems += _nested_versions(attrs.get("ome", {}), where) + _units(attrs.get("ome", {}), where)
    for model, node, where in [(Image, group, str(path))] + (
        [(Labels, group["labels"], f"{path}/labels")] + [(ImageLabel, n, w) for n, _, w in images[1:]]
        if "labels" in group else []
    ):
        try:
            model.from_zarr(node)
        except Exception as exc:  # pydantic's ValidationError, or a missing/mismatched array
            problems.append(f"{where}: ome-zarr-models {model.__name__}: {exc}")
    return problems


def assert_valid_ngff(path: str | Path) -> None:
    """Fail naming every NGFF 0.5 problem of the OME-Zarr image at ``path``."""
    problems = ngff_problems(path)
    assert not problems, "\n".join(problems)
