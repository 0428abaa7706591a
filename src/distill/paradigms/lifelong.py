"""Lifelong (continual) distillation: tasks arrive one after another, old data is gone.

`scheme: lifelong` (a pipeline scheme, see `distill.app.stages`) turns one config into a stage per
task. Each task is a set of classes (class-incremental: one output head over every class). A
stage trains on its task's data only, starting from the previous stage's weights, with:

- cross-entropy over the classes seen so far (later classes' logits are masked out);
- Learning without Forgetting (Li & Hoiem 2016): the previous stage's model, frozen, is the
  teacher; KL at temperature T between its and the student's distributions over the *old*
  classes, on the *new* task's inputs;
- Elastic Weight Consolidation (Kirkpatrick et al. 2017), the surveys' retention loss:
  (lambda / 2) sum_k sum_i F_k,i (theta_i - theta*_k,i)^2 over every earlier task k, with
  F_k the diagonal Fisher information of the model after task k on task k's data, saved as
  `fisher.safetensors` in that stage's dir when the stage ends (its data is not read again).

With `lwf_weight: 0` and `ewc_weight: 0` this is plain fine-tuning (catastrophic forgetting);
`joint: true` trains one stage on every task at once (the upper bound). After each stage the
model is tested on every task, class-incremental (argmax over every class seen so far) and
task-incremental (argmax within the task's classes): `results.json` holds both matrices,
the final average accuracy and the forgetting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from distill.core.checkpoint import load_weights, save_weights
from distill.core.errors import ConfigError
from distill.core.settings import Strict
from distill.schemes.base import SchemeBase, SchemeContext, parse_args, soft_kl

FISHER_FILE = "fisher.safetensors"


class LifelongArgs(Strict):
    """`scheme: lifelong` arguments."""

    tasks: list[list[int]] = Field(min_length=1)  # the classes of each task, in order
    lwf_weight: float = Field(1.0, ge=0)  # Learning without Forgetting KD term (0: off)
    temperature: float = Field(2.0, gt=0)  # of the LwF term (Li & Hoiem use 2)
    ewc_weight: float = Field(0.0, ge=0)  # lambda of the EWC penalty (0: off)
    fisher_samples: int = Field(1000, ge=1)  # task samples used to estimate each Fisher
    joint: bool = False  # one stage on all tasks together (the upper bound)


def check_tasks(tasks: list[list[int]], joint: bool) -> None:
    flat = [c for t in tasks for c in t]
    if any(not t for t in tasks) or len(set(flat)) != len(flat):
        raise ConfigError(
            f"scheme.args.tasks: each task needs one or more classes and no class may appear in "
            f"two tasks; got {tasks}"
        )
    if len(tasks) < 2 and not joint:
        raise ConfigError(
            "scheme.args.tasks: a lifelong run needs two or more tasks (or joint: true)"
        )


class LwFArgs(Strict):
    old_classes: list[int] = []  # classes of earlier tasks (what the teacher knows)
    new_classes: list[int] = Field(min_length=1)  # this task's classes
    lwf_weight: float = Field(1.0, ge=0)
    temperature: float = Field(2.0, gt=0)
    ewc_weight: float = Field(0.0, ge=0)
    anchors: list[str] = []  # earlier stage dirs holding fisher.safetensors


class LwF(SchemeBase):
    """One task of a lifelong sequence: masked CE + LwF distillation + EWC (module docstring)."""

    Args = LwFArgs

    def __init__(self, ctx: SchemeContext):
        args = parse_args(LwFArgs, ctx.args, "lwf")
        if ctx.objective.terms:
            raise ConfigError(
                "objective.terms: the lwf scheme makes its own losses (masked CE, LwF, EWC); "
                "set their weights in scheme.args instead"
            )
        if args.lwf_weight > 0 and args.old_classes and ctx.teacher is None:
            raise ConfigError(
                "teacher: the lwf scheme's distillation term needs the previous task's model as "
                "teacher (scheme: lifelong sets it), or lwf_weight: 0"
            )
        teacher = ctx.teacher if args.lwf_weight > 0 and args.old_classes else None
        super().__init__(ctx.student, ctx.objective, frozen=[teacher] if teacher else [])
        self.teacher = teacher
        self.args = args
        n = int(ctx.data.num_classes)
        bad = [c for c in args.old_classes + args.new_classes if not 0 <= c < n]
        if bad:
            raise ConfigError(f"scheme.args: classes {bad} are outside the model's {n} outputs")
        self.seen = torch.zeros(n, dtype=torch.bool)
        self.seen[args.old_classes + args.new_classes] = True
        self.old = torch.as_tensor(args.old_classes, dtype=torch.long)
        self.anchors: list[dict[str, tuple[Tensor, Tensor]]] = []  # loaded when fitting starts

    def on_fit_start(self, total_steps: int, steps_per_epoch: int) -> None:
        """Read the earlier tasks' EWC anchors (written after those stages ran)."""
        device = next(self.student.parameters()).device
        self.anchors = [
            {
                k: (f.to(device), p.to(device))
                for k, (f, p) in load_anchor(Path(a), self.student).items()
            }
            for a in self.args.anchors
        ]

    def step(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        logits = self.student(batch["input"])
        seen = self.seen.to(logits.device)
        masked = logits.float().masked_fill(~seen, -1e4)
        labelled = batch["target"] >= 0
        ce = (
            F.cross_entropy(masked[labelled], batch["target"][labelled])
            if labelled.any()
            else masked.new_zeros(())
        )
        out = {"ce": ce}
        loss = self.objective.task_weight.at(step) * ce
        if self.teacher is not None:
            old = self.old.to(logits.device)
            with torch.no_grad():
                t_old = self.teacher(batch["input"]).float()[:, old]
            t = self.args.temperature
            lwf = soft_kl(logits.float()[:, old], F.softmax(t_old / t, -1), t)
            out["lwf"] = lwf
            loss = loss + self.args.lwf_weight * lwf
        if self.anchors and self.args.ewc_weight > 0:
            ewc = ewc_penalty(self.student, self.anchors)
            out["ewc"] = ewc
            loss = loss + 0.5 * self.args.ewc_weight * ewc
        return {"loss": loss, **out}

    def to(self, device: torch.device) -> LwF:
        super().to(device)
        self.anchors = [
            {k: (f.to(device), p.to(device)) for k, (f, p) in a.items()} for a in self.anchors
        ]
        return self


# ---------------------------------------------------------------------------- EWC
def ewc_penalty(model: nn.Module, anchors: list[dict[str, tuple[Tensor, Tensor]]]) -> Tensor:
    """sum_k sum_i F_k,i (theta_i - theta*_k,i)^2 (without the lambda / 2)."""
    params = dict(model.named_parameters())
    total = next(iter(params.values())).new_zeros((), dtype=torch.float32)
    for anchor in anchors:
        for name, (fisher, theta_star) in anchor.items():
            total = total + (fisher * (params[name].float() - theta_star).pow(2)).sum()
    return total


def diagonal_fisher(
    model: nn.Module,
    inputs: Tensor,
    classes: list[int],
    *,
    chunk: int = 256,
) -> dict[str, Tensor]:
    """The diagonal of the Fisher information of `model` (eval mode) on `inputs`:

        F_i = (1/N) sum_n sum_y p(y | x_n) (d log p(y | x_n) / d theta_i)^2

    with p the model's softmax over `classes` (those it has learnt so far). The expectation
    over y is exact (every class, weighted by p), not sampled, and the per-sample gradients
    come from `torch.func` (vmap over samples and classes), so the estimate is deterministic.
    """
    from torch.func import functional_call, grad, vmap

    was = model.training
    model.eval()
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = {n: p.detach() for n, p in model.named_parameters() if n in names}
    frozen = {n: p.detach() for n, p in model.named_parameters() if n not in names}
    buffers = dict(model.named_buffers())
    idx = torch.as_tensor(classes, dtype=torch.long)

    def log_p(p: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        out = functional_call(model, ({**p, **frozen}, buffers), (x.unsqueeze(0),))
        return F.log_softmax(out.float()[0, idx], -1).gather(0, y.reshape(1)).squeeze(0)

    per_sample = vmap(grad(log_p), in_dims=(None, 0, 0))
    fisher = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    with torch.no_grad():
        probs = F.softmax(model(inputs).float()[:, idx], -1)  # (N, C')
    n_cls = len(classes)
    xs = inputs.repeat_interleave(n_cls, 0)
    ys = torch.arange(n_cls).repeat(len(inputs))
    weights = probs.reshape(-1)
    for start in range(0, len(xs), chunk):
        sl = slice(start, start + chunk)
        grads = per_sample(params, xs[sl], ys[sl])
        w = weights[sl]
        for n, g in grads.items():
            fisher[n] += torch.einsum("b,b...->...", w, g.float().pow(2))
    model.train(was)
    return {n: f / len(inputs) for n, f in fisher.items()}


def save_anchor(stage_dir: Path, model: nn.Module, fisher: dict[str, Tensor]) -> None:
    """The Fisher and the weights it was taken at, for later tasks' EWC penalties."""
    params = dict(model.named_parameters())
    tensors = {f"fisher/{n}": f for n, f in fisher.items()}
    tensors.update({f"theta/{n}": params[n].detach().float() for n in fisher})
    save_weights(stage_dir / FISHER_FILE, tensors, {"kind": "ewc_anchor"})


def load_anchor(stage_dir: Path, model: nn.Module) -> dict[str, tuple[Tensor, Tensor]]:
    path = stage_dir / FISHER_FILE
    if not path.is_file():
        raise ConfigError(
            f"scheme.args.anchors: {str(path)!r} does not exist; it is written when a lifelong "
            f"stage with ewc_weight > 0 ends (run the earlier stages first)"
        )
    tensors, _ = load_weights(path)
    own = dict(model.named_parameters())
    out = {}
    for key, fisher in tensors.items():
        if not key.startswith("fisher/"):
            continue
        name = key[len("fisher/") :]
        theta = tensors[f"theta/{name}"]
        if name not in own or own[name].shape != fisher.shape:
            raise ConfigError(
                f"{str(path)!r}: parameter {name!r} does not fit the student; the EWC anchor "
                f"belongs to another architecture"
            )
        out[name] = (fisher, theta)
    return out


# ------------------------------------------------------------------ pipeline hooks
def stage_configs(cfg: Any, base: dict, stage_dir, trained) -> list[tuple[str, dict]]:
    """(name, config dict) per task; `stage_dir(i, name)` and `trained(model, dir)` come from
    distill.app.stages so that every pipeline names its dirs the same way."""
    args = parse_args(LifelongArgs, cfg.scheme.args, "lifelong")
    check_tasks(args.tasks, args.joint)
    tasks = [sorted(c for t in args.tasks for c in t)] if args.joint else args.tasks
    student = dict(base["student"])
    out: list[tuple[str, dict]] = []
    for t, classes in enumerate(tasks):
        name = "joint" if args.joint else f"task{t}"
        old = sorted(c for prev in tasks[:t] for c in prev)
        scheme_args = {
            "old_classes": old,
            "new_classes": list(classes),
            "lwf_weight": args.lwf_weight,
            "temperature": args.temperature,
            "ewc_weight": args.ewc_weight,
            "anchors": [str(stage_dir(i, f"task{i}")) for i in range(t) if args.ewc_weight > 0],
        }
        data = {
            **base,
            "scheme": {"name": "lwf", "args": scheme_args},
            "data": {**base["data"], "task_classes": list(classes)},
            "student": student,
            "teacher": None,
        }
        if t > 0:
            prev = stage_dir(t - 1, f"task{t - 1}")
            plain = {k: v for k, v in student.items() if k != "weights"}
            if args.lwf_weight > 0:
                data["teacher"] = trained(plain, prev)
            data["student"] = trained(plain, prev)
        out.append((name, data))
    return out


def after_stage(cfg: Any, index: int, stage: Any) -> None:
    """Save the EWC anchor of a finished task (once), while its data is still at hand."""
    args = parse_args(LifelongArgs, cfg.scheme.args, "lifelong")
    stage_dir = stage.resolved_run_dir()
    if args.joint or args.ewc_weight == 0 or index == len(args.tasks) - 1:
        return
    if (stage_dir / FISHER_FILE).is_file():
        return
    from distill.app.build import load_data, load_model, weights_path
    from distill.models.weights import restore_weights

    data = load_data(stage.data)
    model = load_model(stage.student, data, "student")
    restore_weights(model, weights_path(str(stage_dir)), "student")
    n = min(args.fisher_samples, len(data.train))
    g = torch.Generator().manual_seed(stage.train.seed)
    rows = torch.randperm(len(data.train), generator=g)[:n]
    inputs = data.train.inputs[rows] if hasattr(data.train, "inputs") else None
    if inputs is None:
        raise ConfigError("EWC needs an in-memory array dataset (its inputs)")
    seen = sorted(c for t in args.tasks[: index + 1] for c in t)
    save_anchor(stage_dir, model, diagonal_fisher(model, inputs, seen))


@torch.no_grad()
def task_accuracies(cfg: Any, stages: list[Any]) -> dict[str, Any]:
    """Test accuracy on every task after every stage (class- and task-incremental)."""
    from distill.app.build import load_data, load_model, weights_path
    from distill.evaluate import predict_logits
    from distill.models.weights import restore_weights

    args = parse_args(LifelongArgs, cfg.scheme.args, "lifelong")
    data = load_data(cfg.data)
    targets = data.test.targets
    rows_ci, rows_ti = [], []
    for s, stage in enumerate(stages):
        model = load_model(stage.student, data, "student")
        restore_weights(model, weights_path(str(stage.resolved_run_dir())), "student")
        logits = predict_logits(model, data.test, batch_size=1024)
        learnt = args.tasks if args.joint else args.tasks[: s + 1]
        seen = torch.as_tensor(sorted(c for t in learnt for c in t))
        ci, ti = [], []
        for task in args.tasks:
            cls = torch.as_tensor(task)
            rows = torch.isin(targets, cls)
            y = targets[rows]
            pred_ci = seen[logits[rows][:, seen].argmax(-1)]
            pred_ti = cls[logits[rows][:, cls].argmax(-1)]
            ci.append(float((pred_ci == y).float().mean()))
            ti.append(float((pred_ti == y).float().mean()))
        rows_ci.append(ci)
        rows_ti.append(ti)
    return {
        "tasks": args.tasks,
        "acc_class_il": rows_ci,  # [stage][task]; tasks after the stage are not learnt yet
        "acc_task_il": rows_ti,
        **summary_metrics(rows_ci, "class_il", args.joint),
        **summary_metrics(rows_ti, "task_il", args.joint),
    }


def summary_metrics(matrix: list[list[float]], tag: str, joint: bool) -> dict[str, float]:
    """Final average accuracy over all tasks, and average forgetting (Chaudhry et al. 2018):
    the best accuracy a task ever had minus its final one, over every task but the last."""
    final = matrix[-1]
    out = {f"avg_acc_{tag}": sum(final) / len(final)}
    if not joint and len(matrix) > 1:
        drops = [
            max(matrix[s][j] for s in range(j, len(matrix) - 1)) - final[j]
            for j in range(len(final) - 1)
        ]
        out[f"forgetting_{tag}"] = sum(drops) / len(drops)
    return out


class Lifelong:
    """The `lifelong` pipeline (see `distill.app.stages.Pipeline`): a stage per task."""

    stages = staticmethod(stage_configs)
    after_stage = staticmethod(after_stage)

    @staticmethod
    def summary(cfg: Any, stages: list[Any], results: list[dict]) -> dict[str, Any]:
        return {"lifelong": task_accuracies(cfg, stages)}


LIFELONG = Lifelong()


__all__ = [
    "LIFELONG",
    "LifelongArgs",
    "LwF",
    "after_stage",
    "diagonal_fisher",
    "ewc_penalty",
    "stage_configs",
    "task_accuracies",
]
