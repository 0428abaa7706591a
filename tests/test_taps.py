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


def test_a_tap_reads_a_models_own_parameters_and_buffers():
    from torch import nn

    from distill.core.errors import LayerError
    from distill.taps import Tap

    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    with Tap(model, ["1", "2.weight", "1.running_var", "2:input"]) as tap:
        k = tap.run(torch.randn(5, 3))
    assert k.feats["2.weight"] is model[2].weight  # the live parameter: gradients reach it
    assert k.feats["1.running_var"].shape == (4,) and k.feats["1"].shape == (5, 4)
    assert "2.weight" not in tap.feats  # read per pass, not hooked
    with pytest.raises(LayerError, match="did you mean '2.weight'"):
        Tap(model, ["2.wieght"])
