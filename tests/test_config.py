"""The schema is the one source of defaults; errors name the key; docs stay in sync."""

from pathlib import Path

import pytest
import yaml

from unetflow.config import ConfigError, config_readme, load_config, schema_markdown, stage_settings, validate_config
from unetflow.model import UNet

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_fill_every_section():
    config = validate_config({})
    assert config["weights"]["w0"] == 10.0 and config["weights"]["sigma"] == 5.0
    assert config["model"]["padding"] == "valid"
    assert config["slides"][0]["format"] == "synthetic"


@pytest.mark.parametrize(
    "config, key",
    [({"train": {"stpes": 5}}, "stpes"), ({"train": {"steps": "many"}}, "train.steps"), ({"modle": {}}, "modle")],
)
def test_errors_name_the_key(config, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate_config(config)


def test_stage_settings_from_json_and_file(tmp_path):
    assert stage_settings("weights", '{"w0": 5}')["sigma"] == 5.0
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"weights": {"sigma": 3}}))
    assert stage_settings("weights", config_path=str(path))["sigma"] == 3
    with pytest.raises(ConfigError, match="not valid JSON"):
        stage_settings("weights", "{w0: 5")


@pytest.mark.parametrize("name", ["config.yaml", "isbi2012.yaml", "dsb2018.yaml", "ctc.yaml"])
def test_shipped_configs_are_valid(name):
    path = ROOT / "config" / name
    if not path.exists():
        pytest.fail(f"{path} is missing")
    load_config(path)


def test_paper_config_layers_over_a_dataset_config():
    """config/paper-gpu.yaml is an overlay: over ISBI it gives the paper's net, tile and targets."""
    config = load_config(ROOT / "config" / "isbi2012.yaml", ROOT / "config" / "paper-gpu.yaml")
    assert (config["model"]["depth"], config["model"]["base_channels"]) == (5, 64)
    assert UNet(1, 2, depth=5, base_channels=64).input_size(config["train"]["tile"]) == 572
    assert config["weights"]["target"]["mode"] == "binary" and config["train"]["optimizer"] == "sgd"
    assert config["dataset"]["path"] == "../shared/data/isbi2012"  # the dataset config still applies


def test_config_readme_matches_schema():
    readme = (ROOT / "config" / "README.md").read_text()
    assert "| `train.steps` |" in schema_markdown()
    assert readme == config_readme(), "regenerate: python -m unetflow.config > config/README.md"


def test_snakemake_validation_names_the_key():
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    with pytest.raises(WorkflowError, match="stpes"):
        validate({"train": {"stpes": 1}}, str(ROOT / "workflow/schemas/config.schema.yaml"), set_default=True)


def test_config_files_layer_like_snakemake(tmp_path):
    base, mine = tmp_path / "config.yaml", tmp_path / "my.yaml"
    base.write_text(yaml.safe_dump({"dataset": {"chunk": 256, "split": {"val_fraction": 0.25}}}))
    mine.write_text(yaml.safe_dump({"dataset": {"format": "pairs", "split": {"seed": 4}}}))
    layered = stage_settings("dataset", config_path=[str(base), str(mine)])
    assert layered["chunk"] == 256 and layered["format"] == "pairs"
    assert layered["split"] == {
        "val_fraction": 0.25, "seed": 4, "val_indices": None, "test_fraction": None, "test_indices": None
    }


def test_every_leaf_key_is_documented():
    rows = [line for line in schema_markdown().splitlines()[2:] if line.startswith("| `")]
    undocumented = [row.split("|")[1].strip() for row in rows if row.split("|")[4].strip() == ""]
    assert not undocumented, f"schema keys without description: {undocumented}"
