"""U-Net shapes, size arithmetic and save/load round trips."""

from __future__ import annotations

import json

import pytest
import torch

from unetflow.model import UNet, load_model, save_checkpoint, write_model_json


def test_paper_network_maps_572_to_388() -> None:
    net = UNet(depth=5, base_channels=64)
    assert net.output_size(572) == 388
    assert net.input_size(388) == 572
    assert net.margin == 92
    assert net.valid_output_size(388) == 388
    assert net.valid_output_size(380) == 388


def test_paper_network_forward_shape_572() -> None:
    # A narrow net has the paper's geometry (depth 5) at a fraction of the cost.
    net = UNet(depth=5, base_channels=2).eval()
    with torch.no_grad():
        out = net(torch.zeros(1, 1, 572, 572))
    assert out.shape == (1, 2, 388, 388)


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5])
def test_size_helpers_agree_with_forward_pass(depth: int) -> None:
    net = UNet(in_channels=3, n_classes=3, depth=depth, base_channels=2).eval()
    period = 2 ** (depth - 1)
    first = net.valid_output_size(1)
    for n in range(1, 3 * period + 2):
        out = net.valid_output_size(n)
        assert out >= n and out < n + period
        inp = net.input_size(out)
        assert net.output_size(inp) == out
        assert inp - out == 2 * net.margin
    for out in (first, first + period, first + 2 * period):
        inp = net.input_size(out)
        with torch.no_grad():
            y = net(torch.zeros(2, 3, inp, inp))
        assert y.shape == (2, 3, out, out)


def test_margin_follows_the_paper_formula() -> None:
    # A double conv at level l removes 2 px per side at that level's scale, 2 * 2**l at the
    # input's: depth levels down plus depth - 1 up give 2 (2**d - 1) + 2 (2**(d-1) - 1).
    margins = [UNet(depth=d, base_channels=1).margin for d in range(1, 6)]
    assert margins == [2 * (2**d - 1) + 2 * (2 ** (d - 1) - 1) for d in range(1, 6)]
    assert margins[-1] == 92


def test_invalid_sizes_raise() -> None:
    net = UNet(depth=3, base_channels=1)
    with pytest.raises(ValueError, match="not reachable"):
        net.input_size(net.valid_output_size(10) + 1)
    with pytest.raises(ValueError, match="odd edge"):
        net.output_size(net.input_size(net.valid_output_size(10)) + 1)
    with pytest.raises(ValueError, match="too small"):
        net.output_size(10)


def test_same_padding_keeps_size() -> None:
    net = UNet(depth=3, base_channels=2, padding="same").eval()
    assert net.margin == 0
    assert net.valid_output_size(30) == 32
    assert net.input_size(32) == 32
    with torch.no_grad():
        assert net(torch.zeros(1, 1, 32, 32)).shape == (1, 2, 32, 32)


def test_he_normal_init_and_zero_bias() -> None:
    torch.manual_seed(0)
    net = UNet(depth=2, base_channels=64)
    conv = net.down[1][0]  # 64 -> 128 channels, fan_in = 64 * 9
    std = conv.weight.std().item()
    assert abs(std - (2 / (64 * 9)) ** 0.5) < 0.05 * std
    assert torch.count_nonzero(conv.bias) == 0


def test_save_and_load_round_trip(tmp_path) -> None:
    net = UNet(in_channels=1, depth=2, base_channels=2, dropout=0.1)
    save_checkpoint(tmp_path / "best.pt", net, step=7)
    write_model_json(tmp_path, net, normalization={"mean": [0.0], "std": [1.0]})
    loaded = load_model(tmp_path)
    assert loaded.config == net.config and not loaded.training
    x = torch.randn(1, 1, 24, 24)
    with torch.no_grad():
        assert torch.equal(loaded(x), net.eval()(x))
    meta = json.loads((tmp_path / "model.json").read_text())
    assert meta["model"]["depth"] == 2 and meta["in_channels"] == 1
    assert load_model(tmp_path / "best.pt").config == net.config


def test_load_model_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="best.pt"):
        load_model(tmp_path)
    torch.save({"weights": 1}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="not a unetflow checkpoint"):
        load_model(tmp_path / "x.pt")
