"""Losses that fail on purpose, reached from configs as 'fault_losses:NAME'."""

from torch import Tensor

calls = {"n": 0}


def nan_from_call_6(student: Tensor, teacher: Tensor) -> Tensor:
    """Finite for five calls, then NaN: a term that goes bad mid-run."""
    calls["n"] += 1
    value = (student - teacher.detach()).pow(2).mean()
    return value * float("nan") if calls["n"] >= 6 else value


def nan_gradient(student: Tensor, teacher: Tensor) -> Tensor:
    """Value 0 (finite), gradient NaN: d sqrt(u)/du is inf at u = 0, times d|x-x|/dx = 0."""
    return (student - student.detach()).abs().sqrt().sum() + 0 * teacher.sum()
