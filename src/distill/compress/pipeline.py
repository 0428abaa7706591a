"""`distill compress CONFIG`: prune -> distill -> quantize -> export, in one config.

A compression config names a base experiment (data, student, objective, training
settings: any `distill run` config) and a list of stages. Each stage makes one model from
earlier ones and is measured the same way, so the final table compares them all:

- `load`: a model you already have (`model:` with `weights:`), e.g. your trained teacher.
- `train`: train `model` (default: the base student) from scratch, distilled from the
  stage named by `teacher` (offline KD with the base objective) or alone without one.
- `prune`: prune the `source` stage's model (structured channels or unstructured
  magnitude), then recover it by distillation from `teacher` (default: the unpruned source).
- `lowrank`: factorise the source's large Linear layers by SVD, then recover by KD.
- `quantize`: quantization-aware training of the source at `quantize.bits`, distilled from
  `teacher` (QAT-KD) or alone (no teacher); `scheme` may pick `speq` or `qkd`.
- `search`: search student shapes under a budget (distill.compress.search), then train the
  chosen one fully with KD from `teacher`.

Every stage writes a normal run dir (so `distill eval` and `distill report` read it), is
exported to ONNX and checked against PyTorch with ONNX Runtime, and adds a row: parameters
(and non-zero ones), size on disk, CPU latency in PyTorch and ONNX Runtime, test accuracy in
both. A finished stage is not redone when the command runs again.
"""

from __future__ import annotations

import copy
import json
import re
import sys
from pathlib import Path
from typing import Any

import torch
import yaml

from distill.app.build import load_data, weights_path
from distill.app.terms import needs_teacher
from distill.core import rundir
from distill.core.checkpoint import atomic_write_bytes, atomic_write_text, save_weights
from distill.core.config import (
    parse_config,
)
from distill.core.errors import ConfigError
from distill.core.rundir import finished
from distill.data import load_batch
from distill.evaluate import predict_logits, targets_of
from distill.models import build_model
from distill.models.weights import restore_weights
from distill.profile import count_parameters, file_size, latency_ms

from .plan import CompressConfig, load_compress_config


class Compressor:
    """Runs a CompressConfig's stages in order; see the module docstring."""

    def __init__(self, cfg: CompressConfig, *, progress: bool = True):
        self.cfg = cfg
        self.run_dir = cfg.resolved_run_dir()
        self.base = copy.deepcopy(cfg.base)
        if isinstance(self.base.get("scheme"), str):
            self.base["scheme"] = {"name": self.base["scheme"]}
        self.base.pop("stages", None)
        probe = parse_config(self._experiment(None, None, self.run_dir / "probe"), "base")
        self.data = load_data(probe.data)
        self.models: dict[str, dict[str, Any]] = {}
        self.rows: list[dict[str, Any]] = []
        self.log = (
            (lambda m: print(m, file=sys.stderr, flush=True)) if progress else (lambda m: None)
        )

    # ---------------------------------------------------------------- configs of runs
    def _experiment(
        self, student: dict | None, teacher: dict | None, run_dir: Path, stage=None
    ) -> dict[str, Any]:
        exp = copy.deepcopy(self.base)
        exp["name"] = f"{self.cfg.name}-{run_dir.name}"
        exp["run_dir"] = str(run_dir)
        if student is not None:
            exp["student"] = student
        exp.setdefault("student", {"name": "mlp"})
        exp["train"] = {**exp.get("train", {}), **(stage.train if stage else {})}
        scheme = stage.scheme.model_dump() if stage is not None and stage.scheme else None
        if teacher is not None:
            exp["teacher"] = teacher
            exp["scheme"] = scheme or (
                exp["scheme"]
                if exp.get("scheme", {}).get("name", "offline") not in ("supervised",)
                else {"name": "offline"}
            )
        else:
            exp["teacher"] = None
            exp["scheme"] = scheme or {"name": "supervised"}
            objective = exp.get("objective", {})
            terms = [t for t in objective.get("terms", []) if not needs_teacher(t["loss"])]
            exp["objective"] = {**objective, "terms": terms}
            if exp["scheme"]["name"] == "supervised":  # no teacher: the task loss alone
                exp["objective"]["task_weight"] = 1.0
        if stage is not None and stage.objective is not None:
            exp["objective"] = stage.objective
        exp.pop("teachers", None)
        return exp

    def _stage_dir(self, i: int, name: str) -> Path:
        return self.run_dir / "stages" / f"{i:02d}-{name}"

    def _spec(self, name: str | None) -> dict[str, Any] | None:
        return None if name is None else copy.deepcopy(self.models[name])

    def _train(self, stage, student: dict, teacher: dict | None, run_dir: Path) -> dict:
        from distill.app.run import run_experiment

        cfg = parse_config(
            self._experiment(student, teacher, run_dir, stage), f"stage {stage.name}"
        )
        done = run_dir / "results.json"
        if finished(run_dir):
            return json.loads(done.read_text())
        can_resume = (run_dir / "checkpoints" / "last.safetensors").is_file()
        self.log(f"compress: training stage {stage.name} in {run_dir}")
        result = run_experiment(
            cfg, resume=can_resume, overwrite=not can_resume and run_dir.exists()
        )
        if not result["complete"]:
            raise RuntimeError(
                f"stage {stage.name!r} stopped early ({result['stopped_by']}); run the same "
                "command again to resume it"
            )
        return result

    def load(self, spec: dict[str, Any]) -> torch.nn.Module:
        model = build_model(
            spec["name"], self.data.input_shape, self.data.num_classes, spec.get("args")
        )
        restore_weights(model, weights_path(spec["weights"]), spec["name"])
        return model.eval()

    # ----------------------------------------------------------------------- stages
    def run(self) -> dict[str, Any]:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(
            self.run_dir / "compress.yaml",
            yaml.safe_dump(self.cfg.model_dump(mode="json"), sort_keys=False),
        )
        for i, stage in enumerate(self.cfg.stages):
            stage_dir = self._stage_dir(i, stage.name)
            record = stage_dir / "stage.json"
            own = stage.model_dump(mode="json")
            if record.is_file():  # finished earlier
                saved = json.loads(record.read_text())
                if saved.get("config") != own:
                    raise ConfigError(
                        f"stage {stage.name!r} in {str(stage_dir)!r} was made with another "
                        "config; pass --overwrite to start again or set run_dir=<new dir>"
                    )
            else:
                stage_dir.mkdir(parents=True, exist_ok=True)
                saved = getattr(self, f"_stage_{stage.kind}")(stage, stage_dir)
                saved["rows"] = [
                    self.measure(r["label"], r["spec"], stage_dir, stage.kind, r.get("extra", {}))
                    for r in saved.pop("measure")
                ]
                saved["config"] = own
                atomic_write_text(record, json.dumps(saved, indent=2))
            self.models[stage.name] = saved["spec"]
            self.rows.extend(saved["rows"])
            self._write_outputs()
        return {"run_dir": str(self.run_dir), "rows": self.rows}

    def _stage_load(self, stage, stage_dir: Path) -> dict:
        spec = stage.model.model_dump(exclude_none=True)
        spec["weights"] = str(weights_path(spec["weights"]))
        return {"spec": spec, "measure": [{"label": stage.name, "spec": spec}]}

    def _stage_train(self, stage, stage_dir: Path) -> dict:
        model = (
            stage.model.model_dump(exclude_none=True)
            if stage.model
            else copy.deepcopy(self.base.get("student", {}))
        )
        model.pop("weights", None)
        if stage.source is not None:  # start from an earlier stage's weights
            model = self._spec(stage.source)
        if stage.sparsity is not None:
            model["sparsity"] = stage.sparsity.model_dump()
        run = stage_dir / "run"
        self._train(stage, model, self._spec(stage.teacher), run)
        spec = {k: v for k, v in model.items() if k in ("name", "args")}
        spec["weights"] = str(weights_path(str(run)))
        return {"spec": spec, "measure": [{"label": stage.name, "spec": spec}]}

    def _surgery(self, stage, stage_dir: Path, operate) -> dict:
        """Load the source, change it (`operate`), save it, then recover it with KD."""
        source = self._spec(stage.source)
        model = self.load(source)
        details = operate(model)
        cut = stage_dir / "surgery.safetensors"
        save_weights(cut, model, {"surgery": stage.kind, "details": details})
        spec = {"name": source["name"], "args": source.get("args", {}), "weights": str(cut)}
        measure = [
            {
                "label": f"{stage.name} (before recovery)",
                "spec": spec,
                "extra": {**details, "intermediate": True},  # left out of the Pareto plot
            }
        ]
        epochs = stage.train.get("epochs", self.base.get("train", {}).get("epochs", 1))
        if epochs:
            student = dict(spec)
            if stage.kind == "prune" and not stage.prune.structured:
                # hold the zeros while the surviving weights recover
                student["sparsity"] = {
                    "amount": stage.prune.amount,
                    "scope": stage.prune.scope,
                    "skip": stage.prune.skip,
                }
            teacher = self._spec(stage.teacher or stage.source)
            run = stage_dir / "run"
            self._train(stage, student, teacher, run)
            spec = {**spec, "weights": str(weights_path(str(run)))}
            measure.append({"label": stage.name, "spec": spec, "extra": details})
        return {"spec": spec, "measure": measure, "details": details}

    def _stage_prune(self, stage, stage_dir: Path) -> dict:
        from distill.compress.prune import magnitude_prune, prune_channels

        p = stage.prune

        def operate(model):
            if p.structured:
                example = load_batch(self.data.train, torch.arange(2))["input"].float()
                layers = prune_channels(
                    model, p.amount, example, criterion=p.criterion, skip=p.skip
                )
                return {"structured": True, "layers": layers}
            magnitude_prune(model, p.amount, p.scope, p.skip)
            return {"structured": False, "amount": p.amount}

        return self._surgery(stage, stage_dir, operate)

    def _stage_lowrank(self, stage, stage_dir: Path) -> dict:
        from distill.compress.lowrank import factorize

        lr = stage.lowrank

        def operate(model):
            layers = factorize(
                model,
                energy=lr.energy,
                rank_ratio=lr.rank_ratio,
                min_features=lr.min_features,
                skip=lr.skip,
            )
            if not layers:
                raise ConfigError(
                    f"stage {stage.name!r}: no Linear layer of the source gets smaller at this "
                    "energy / rank_ratio (or none has min_features inputs and outputs)"
                )
            return {"layers": layers}

        return self._surgery(stage, stage_dir, operate)

    def _stage_quantize(self, stage, stage_dir: Path) -> dict:
        student = {**self._spec(stage.source), "quantize": stage.quantize.model_dump()}
        run = stage_dir / "run"
        self._train(stage, student, self._spec(stage.teacher), run)
        spec = {k: v for k, v in student.items() if k in ("name", "args")}
        spec["weights"] = str(weights_path(str(run)))
        return {"spec": spec, "measure": [{"label": stage.name, "spec": spec}]}

    def _stage_search(self, stage, stage_dir: Path) -> dict:
        from distill.compress.search import search

        s = stage.search
        teacher = self._spec(stage.teacher)
        probe = load_batch(self.data.train, torch.arange(min(64, len(self.data.train))))["input"]
        proxy_stage = stage.model_copy(update={"train": {**stage.train, "epochs": s.proxy_epochs}})
        counter = iter(range(10**6))

        def proxy(args):
            run = stage_dir / "proxy" / f"{next(counter):03d}"
            spec = {"name": s.model, "args": args}
            return self._train(proxy_stage, spec, teacher, run)["best_val_acc"]

        result = search(
            s,
            input_shape=tuple(self.data.input_shape),
            num_classes=self.data.num_classes,
            teacher=self.load(teacher) if teacher else None,
            probe=probe.float(),
            proxy=proxy,
            log=self.log,
        )
        atomic_write_text(stage_dir / "search.json", json.dumps(result, indent=2, default=str))
        self._search_plot(result, stage_dir / "search.png")
        model = {"name": s.model, "args": result["chosen"]}
        run = stage_dir / "run"
        self._train(stage, model, teacher, run)
        spec = {**model, "weights": str(weights_path(str(run)))}
        extra = {"searched": len(result["candidates"]), "chosen": result["chosen"]}
        return {"spec": spec, "measure": [{"label": stage.name, "spec": spec, "extra": extra}]}

    # ---------------------------------------------------------------------- measuring
    @torch.no_grad()
    def measure(self, label: str, spec: dict, stage_dir: Path, kind: str, extra: dict) -> dict:
        from distill.compress.prune import sparsity

        model = self.load(spec)
        test = self.data.test
        inputs = load_batch(test, torch.arange(len(test)))["input"].float()
        targets = targets_of(test)
        logits = predict_logits(model, test, batch_size=512)
        params = count_parameters(model)
        nonzero = sum(int((p != 0).sum()) for p in model.parameters())
        row: dict[str, Any] = {
            "model": label,
            "kind": kind,
            "params": params,
            "nonzero_params": nonzero,
            "sparsity": sparsity(model),
            "quantized": _bits(model),
            "size_bytes": file_size(weights_path(spec["weights"])),
            "test_acc": float((logits.argmax(-1) == targets).float().mean()),
            "latency_ms": latency_ms(
                model,
                self.data.input_shape,
                repeats=self.cfg.export.latency_repeats,
                threads=self.cfg.export.threads,
            )["p50_ms"],
            "weights": spec["weights"],
            **({"details": extra} if extra else {}),
        }
        if self.cfg.export.onnx:
            from distill.compress.export import export_onnx, onnx_latency_ms, onnx_logits, parity

            slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_")
            path = stage_dir / f"{slug}.onnx"
            info = export_onnx(model, self.data.input_shape, path, opset=self.cfg.export.opset)
            check = parity(model, path, inputs)
            onnx_out = onnx_logits(path, inputs)
            row.update(
                onnx=str(path),
                onnx_bytes=info["bytes"],
                onnx_max_abs_diff=check["max_abs_diff"],
                onnx_top1_agreement=check["top1_agreement"],
                onnx_test_acc=float((onnx_out.argmax(-1) == targets).float().mean()),
                onnx_latency_ms=onnx_latency_ms(
                    path,
                    self.data.input_shape,
                    repeats=self.cfg.export.latency_repeats,
                    threads=self.cfg.export.threads,
                )["p50_ms"],
            )
        self.log(f"compress: {label}: test {100 * row['test_acc']:.2f}%, {params:,} params")
        return row

    # ------------------------------------------------------------------------ outputs
    def _write_outputs(self) -> None:
        atomic_write_text(
            self.run_dir / "results.json",
            json.dumps({"name": self.cfg.name, "rows": self.rows}, indent=2),
        )
        atomic_write_text(self.run_dir / "report.md", markdown(self.cfg.name, self.rows))
        if self.rows:
            atomic_write_bytes(self.run_dir / "pareto.png", pareto_png(self.rows))

    @staticmethod
    def _search_plot(result: dict, path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import io

        import matplotlib.pyplot as plt

        rows = [r for r in result["candidates"] if "score" in r]
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.scatter([r["params"] for r in rows], [r["score"] for r in rows], c="grey", s=14)
        front = [r for r in rows if r.get("pareto")]
        front.sort(key=lambda r: r["params"])
        ax.plot(
            [r["params"] for r in front],
            [r["score"] for r in front],
            "o-",
            c="C1",
            label="Pareto set",
        )
        ax.set(xscale="log", xlabel="parameters", ylabel=result["score"], title="Student search")
        ax.legend(fontsize=8)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
        plt.close(fig)
        atomic_write_bytes(path, buf.getvalue())


def _bits(model) -> str | None:
    """'w8a8'-style precision of a fake-quantized model, None for a float one."""
    from distill.compress.quant import QuantLayer

    layers = [m for m in model.modules() if isinstance(m, QuantLayer)]
    if not layers:
        return None
    w = max(m.bits for m in layers)
    acts = [m.act.bits for m in layers if m.act is not None]
    return f"w{w}a{max(acts)}" if acts else f"w{w}"


def markdown(name: str, rows: list[dict[str, Any]]) -> str:
    head = (
        "| model | params | non-zero | size KiB | ONNX KiB | PyTorch latency us | "
        "ORT latency us | test acc % | ORT acc % | ORT = PyTorch top-1 % | ORT max diff |\n"
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n"
    )
    lines = []
    for r in rows:
        name_cell = r["model"] + (f" ({r['quantized']})" if r.get("quantized") else "")
        lines.append(
            f"| {name_cell} | {r['params']:,} | {r['nonzero_params']:,} | "
            f"{r['size_bytes'] / 1024:.1f} | "
            + (f"{r['onnx_bytes'] / 1024:.1f}" if "onnx_bytes" in r else "-")
            + f" | {1000 * r['latency_ms']:.0f} | "
            + (f"{1000 * r['onnx_latency_ms']:.0f}" if "onnx_latency_ms" in r else "-")
            + f" | {100 * r['test_acc']:.2f} | "
            + (f"{100 * r['onnx_test_acc']:.2f}" if "onnx_test_acc" in r else "-")
            + " | "
            + (f"{100 * r['onnx_top1_agreement']:.1f}" if "onnx_top1_agreement" in r else "-")
            + " | "
            + (f"{r['onnx_max_abs_diff']:.1e}" if "onnx_max_abs_diff" in r else "-")
            + " |"
        )
    return f"# Compression: {name}\n\n" + head + "\n".join(lines) + "\n\n![Pareto](pareto.png)\n"


def pareto_png(rows: list[dict[str, Any]]) -> bytes:
    """Test accuracy against size on disk and against latency, Pareto fronts marked
    (models before their recovery training are left out)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from distill.app.report import pareto_front

    rows = [r for r in rows if not r.get("details", {}).get("intermediate")] or rows
    lat_key = "onnx_latency_ms" if all("onnx_latency_ms" in r for r in rows) else "latency_ms"
    size_key = "onnx_bytes" if all("onnx_bytes" in r for r in rows) else "size_bytes"
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, label, scale in (
        (axes[0], size_key, "size on disk (KiB)", 1 / 1024),
        (axes[1], lat_key, "CPU latency, batch 1 (us)", 1000),
    ):
        pts = [(r[key] * scale, 100 * r["test_acc"]) for r in rows]
        ax.scatter(*zip(*pts), c="grey", s=18)
        for (x, y), r in zip(pts, rows):
            ax.annotate(r["model"], (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        front = [pts[i] for i in pareto_front(pts)]
        ax.plot(*zip(*front), "o-", c="C1", label="Pareto front")
        ax.set(xscale="log", xlabel=label, ylabel="test accuracy %")
        ax.legend(fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def run_compress(
    cfg: CompressConfig,
    *,
    overwrite: bool = False,
    progress: bool = True,
    source: Path | None = None,
) -> dict:
    """Run (or continue) the stages; `overwrite` clears what an earlier run wrote (never a
    folder holding other files, nor `source`'s folder: see distill.core.rundir)."""
    run_dir = cfg.resolved_run_dir()
    rundir.check_location(run_dir)
    if overwrite:
        rundir.check_clearable(run_dir, source)
    elif (run_dir / "compress.yaml").is_file():
        # stages may be added to a finished run; what the done stages were made from may not
        # change (each stage also checks its own config)
        old = yaml.safe_load((run_dir / "compress.yaml").read_text())
        new = cfg.model_dump(mode="json")
        for key in ("base", "export"):
            if old.get(key) != new[key]:
                raise ConfigError(
                    f"{str(run_dir)!r} holds a compression run with another {key}; "
                    + rundir.replace_advice(run_dir)
                )
    else:
        rundir.check_fresh(run_dir)
    compressor = Compressor(cfg, progress=progress)  # bad data fails before anything is removed
    with rundir.RunLock(run_dir):
        rundir.begin(run_dir, "compress", overwrite=overwrite, source=source)
        return compressor.run()


__all__ = ["CompressConfig", "Compressor", "load_compress_config", "markdown", "run_compress"]
