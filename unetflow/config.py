"""Configuration: one JSON schema, defaults filled the same way for Snakemake and the CLI.

The schema (``workflow/schemas/config.schema.yaml``, shipped in the package as
``unetflow/schemas/config.schema.yaml``) is the only place defaults live. The Snakefile validates
the whole config at start with :func:`validate_config` (one line per wrong key) and then
``snakemake.utils.validate`` (which fills the defaults in); each CLI stage receives only its slice
(``--settings '<json>'``) and fills that slice's defaults from the same schema, so a stage run by
hand behaves exactly like the rule.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SCHEMA_RESOURCE = ("unetflow", "schemas/config.schema.yaml")


class ConfigError(ValueError):
    """A configuration value is missing, misspelt or of the wrong type."""


def load_schema() -> dict[str, Any]:
    """Return the configuration schema shipped with the package."""
    text = resources.files(SCHEMA_RESOURCE[0]).joinpath(SCHEMA_RESOURCE[1]).read_text()
    return yaml.safe_load(text)


def fill_defaults(instance: Any, schema: dict[str, Any]) -> Any:
    """Recursively insert schema defaults for missing object properties."""
    if not isinstance(instance, dict) or schema.get("type") != "object":
        if isinstance(instance, list) and isinstance(schema.get("items"), dict):
            return [fill_defaults(item, schema["items"]) for item in instance]
        return instance
    filled = dict(instance)
    for key, sub in schema.get("properties", {}).items():
        if key not in filled and "default" in sub:
            filled[key] = json.loads(json.dumps(sub["default"]))
        if key in filled:
            filled[key] = fill_defaults(filled[key], sub)
    return filled


def validate_section(instance: Any, schema: dict[str, Any], where: str) -> None:
    """Raise ConfigError listing every violation, each named by its dotted key path."""
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
    if errors:
        lines = []
        for err in errors:
            key = ".".join([where, *(str(p) for p in err.absolute_path)]).strip(".") or "<top level>"
            lines.append(f"  {key}: {err.message}")
        raise ConfigError("invalid configuration:\n" + "\n".join(lines))


def validate_config(config: dict[str, Any]) -> dict[str, Any]:
    """Validate a whole config and return a copy with every default filled in."""
    schema = load_schema()
    validate_section(config, schema, "")
    filled = fill_defaults(config, schema)
    validate_section(filled, schema, "")
    return filled


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``update`` recursively (nested mappings merged, everything else replaced),
    which is how Snakemake layers ``--configfile`` over the Snakefile's ``configfile:``."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_config(*paths: str | Path) -> dict[str, Any]:
    """Read YAML config files, later ones layered over earlier ones, validate and fill defaults.

    ``load_config("config/config.yaml", "my.yaml")`` gives what ``snakemake --configfile my.yaml``
    uses, since the Snakefile always reads config/config.yaml first.
    """
    merged: dict[str, Any] = {}
    for path in map(Path, paths):
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        with path.open() as fh:
            data = yaml.safe_load(fh) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping, found {type(data).__name__}")
        merged = deep_merge(merged, data)
    return validate_config(merged)


def stage_settings(
    section: str, settings_json: str | None = None, config_path: str | list[str] | None = None
) -> dict[str, Any]:
    """Return one config section with defaults, from a JSON string or a config file.

    ``settings_json`` is what a Snakemake rule passes (its ``params``); ``config_path`` (one file
    or several, layered in order) lets a user run a stage by hand against their config files.
    With neither, the schema defaults are used.
    """
    schema = load_schema()
    if section not in schema["properties"]:
        raise ConfigError(f"unknown config section {section!r}")
    sub = schema["properties"][section]
    if settings_json is not None:
        try:
            value = json.loads(settings_json)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--settings is not valid JSON: {exc}") from exc
    elif config_path:
        paths = [config_path] if isinstance(config_path, str) else config_path
        value = load_config(*paths).get(section, sub.get("default"))
    else:
        value = json.loads(json.dumps(sub.get("default", {})))
    validate_section(value, sub, section)
    return fill_defaults(value, sub)


def _markdown_rows(schema: dict[str, Any], prefix: str) -> list[str]:
    rows = []
    for key, sub in schema.get("properties", {}).items():
        name = f"{prefix}{key}"
        if sub.get("type") == "object" and "properties" in sub:
            rows.extend(_markdown_rows(sub, f"{name}."))
            continue
        if sub.get("type") == "array" and isinstance(sub.get("items"), dict) and "properties" in sub["items"]:
            rows.append(f"| `{name}` | list | see `{name}[].*` | {' '.join(str(sub.get('description', '')).split())} |")
            rows.extend(_markdown_rows(sub["items"], f"{name}[]."))
            continue
        kind = sub.get("type", "")
        kind = " or ".join(kind) if isinstance(kind, list) else kind
        if "enum" in sub:
            kind = " \\| ".join(f"`{v}`" for v in sub["enum"])
        default = f"`{json.dumps(sub['default'])}`" if "default" in sub else "required"
        rows.append(f"| `{name}` | {kind} | {default} | {' '.join(str(sub.get('description', '')).split())} |")
    return rows


def schema_markdown() -> str:
    """The configuration reference (config/README.md's table), generated from the schema."""
    header = "| key | type | default | meaning |\n|---|---|---|---|\n"
    return header + "\n".join(_markdown_rows(load_schema(), "")) + "\n"


CONFIG_README_INTRO = """# Configuration reference

`config/config.yaml` is the default configuration (synthetic data, small CPU-friendly U-Net).
`config/isbi2012.yaml` and `config/dsb2018.yaml` run the real datasets. Pass another file with
`snakemake --configfile my.yaml`, or override one key with `--config run=other`.

Every key is optional. The schema `workflow/schemas/config.schema.yaml` holds the defaults and is
checked before any job runs, so a typo (`stpes:`) or a wrong type (`steps: many`) stops the run
naming the key. This table is generated from the schema and a test keeps it in sync; after
editing the schema run `python -m unetflow.config > config/README.md`.

Each rule receives only its own section as params, so editing `predict.*` reruns prediction and
evaluation, `weights.*` reruns weights and everything after, `evaluate.*` only the evaluation.

"""


def config_readme() -> str:
    """Full text of config/README.md."""
    return CONFIG_README_INTRO + schema_markdown()


if __name__ == "__main__":
    print(config_readme(), end="")
