import pytest
import torch
from torch import nn

from distill.models import ConvNet, ResNet
from distill.taps import Tap, describe_layers, get_layer


def test_captured_tensor_equals_direct_submodule_call():
    model = ResNet((1, 40), 10, widths=(4, 8))
    model.eval()
    x = torch.randn(3, 1, 40)
    with Tap(model, ["layer1", "layer2", "fc:input"]) as tap:
        knowledge = tap.run(x)
    with torch.no_grad():
        stem = model.stem(x)
        l1 = model.layer1(stem)
        l2 = model.layer2(l1)
    assert torch.equal(knowledge.feats["layer1"], l1)
    assert torch.equal(knowledge.feats["layer2"], l2)
    assert torch.equal(knowledge.feats["fc:input"], model.pool(l2).flatten(1))
    assert torch.equal(knowledge.logits, model(x))


def test_hooks_are_removed():
    model = ConvNet((1, 40), 10, channels=(4, 8))
    tap = Tap(model, ["blocks.0", "blocks.1"])
    assert len(model.blocks[0]._forward_hooks) == 1
    tap.remove()
    assert all(len(m._forward_hooks) == 0 for m in model.modules())
    with Tap(model, ["head"]):
        pass
    assert all(len(m._forward_hooks) == 0 for m in model.modules())


def test_wrong_name_fails_at_once_with_suggestion():
    model = ResNet((1, 40), 10, widths=(4, 8, 8))
    with pytest.raises(KeyError) as err:
        Tap(model, ["layr3"], "student ResNet")
    msg = err.value.args[0]
    assert "unknown layer 'layr3' in student ResNet; did you mean 'layer3'" in msg
    assert "distill layers" in msg
    assert all(len(m._forward_hooks) == 0 for m in model.modules())  # nothing half-registered


def test_bad_capture_suffix():
    with pytest.raises(KeyError, match="input"):
        Tap(nn.Linear(2, 2), ["weight:foo"])


def test_get_layer_and_describe():
    model = ConvNet((1, 40), 10, channels=(4, 8))
    assert get_layer(model, "blocks.1") is model.blocks[1]
    rows = {name: shape for name, _, shape, _ in describe_layers(model, torch.zeros(1, 1, 40))}
    params = {name: n for name, _, _, n in describe_layers(model, torch.zeros(1, 1, 40))}
    assert params["blocks.0.0"] == 4 * 1 * 5 and params["head"] == 8 * 10 * 10 + 10
    assert rows["blocks.0"] == "1x4x20"
    assert rows["blocks.1"] == "1x8x10"
    assert rows["head"] == "1x10"
    assert model.training  # mode restored
