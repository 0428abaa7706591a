"""`distill.models.mode.set_training` against `nn.Module.train`: the same flags on every
module, and a module's own `train`, `eval` or `__setattr__` still runs."""

import pytest
import torch
from torch import nn

from distill.evaluate import predict
from distill.models.mode import set_training


class FrozenNorm(nn.Module):
    """Keeps its BatchNorm in eval mode whatever it is told (a common override)."""

    def __init__(self):
        super().__init__()
        self.norm = nn.BatchNorm1d(4)
        self.inner = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5))

    def train(self, mode=True):
        super().train(mode)
        self.norm.eval()
        return self


class Watched(nn.Module):
    """Counts the `training` assignments that go through its `__setattr__`."""

    def __init__(self):
        super().__init__()
        self.seen = 0
        self.body = nn.Linear(4, 4)

    def __setattr__(self, name, value):
        if name == "training" and "seen" in self.__dict__:
            self.__dict__["seen"] += 1
        super().__setattr__(name, value)


def _model() -> nn.Module:
    m = nn.Sequential(
        nn.Linear(4, 4),
        nn.ModuleList([nn.BatchNorm1d(4), nn.Sequential(nn.Dropout(), nn.ReLU())]),
        nn.ModuleDict({"a": FrozenNorm(), "b": Watched()}),
    )
    m.register_module("absent", None)
    m[1][1].append(m[0])  # a module held twice
    return m


def _flags(m: nn.Module) -> list[bool]:
    return [x.training for x in m.modules()]


@pytest.mark.parametrize("mode", [True, False])
def test_same_flags_as_module_train_from_mixed_flags(mode):
    torch.manual_seed(0)
    ours, theirs = _model(), _model()
    for model in (ours, theirs):  # a mix of flags to start from
        for i, x in enumerate(model.modules()):
            x.__dict__["training"] = i % 3 == 0
    assert set_training(ours, mode) is ours
    theirs.train(mode)
    assert _flags(ours) == _flags(theirs)
    assert ours[2]["a"].norm.training is False  # its own `train` ran
    assert ours[2]["b"].training is mode


def test_own_setattr_and_eval_are_used():
    w = Watched()
    set_training(w, False)
    assert w.seen == 1 and not w.training and not w.body.training

    class OwnEval(nn.Linear):
        called = 0

        def eval(self):
            OwnEval.called += 1
            return super().eval()

    m = OwnEval(2, 2)
    set_training(m, False)
    assert OwnEval.called == 1 and not m.training
    set_training(m, True)
    assert OwnEval.called == 1 and m.training


def test_mode_must_be_a_bool():
    with pytest.raises(ValueError, match="boolean"):
        set_training(nn.Linear(2, 2), 1)


def test_predict_evaluates_in_eval_mode_and_restores_the_mode():
    class Data:
        def __init__(self):
            self.x, self.y = torch.randn(6, 4), torch.arange(6) % 2

        def __len__(self):
            return 6

        def __getitem__(self, i):
            return self.x[i], self.y[i]

    seen = []
    model = nn.Sequential(nn.Linear(4, 2), nn.Dropout(0.9))
    model.register_forward_pre_hook(lambda mod, args: seen.append(mod[1].training))
    model.train()
    data = Data()
    logits, targets = predict(model, data, batch_size=4)
    assert seen == [False, False] and model.training and model[1].training
    with torch.no_grad():  # dropout off: the plain linear map
        torch.testing.assert_close(logits, model[0](data.x))
    assert targets.tolist() == data.y.tolist()
