import json

import pytest
import torch
from helpers import kd_cfg, make_teacher, synthetic_cfg

from distill.app.build import build
from distill.app.run import run_experiment
from distill.core.checkpoint import load_checkpoint
from distill.core.config import parse_config
from distill.core.errors import ConfigError
from distill.core.settings import ScheduleSettings
from distill.loop.optim import lr_factor
from distill.loop.trainer import Trainer


def test_loss_decreases_and_files_are_written(tmp_path):
    res = run_experiment(parse_config(synthetic_cfg(tmp_path / "r")))
    rows = [
        json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert res["test_acc"] > 0.8  # well-separated clusters
    for name in (
        "config.yaml",
        "metrics.csv",
        "results.json",
        "checkpoints/best.safetensors",
        "checkpoints/last.safetensors",
    ):
        assert (tmp_path / "r" / name).is_file()
    assert (
        (tmp_path / "r" / "metrics.csv")
        .read_text()
        .splitlines()[0]
        .startswith("epoch,step,lr,train_loss")
    )


def _resume_cfg(tmp_path, run, **train):
    teacher = make_teacher(tmp_path / "teacher.safetensors")
    cfg = kd_cfg(tmp_path / run, teacher)
    cfg["student"] = {
        "name": "mlp",
        "args": {"hidden": [16], "dropout": 0.2},
    }  # dropout uses the RNG
    cfg["data"]["augment"] = [{"name": "noise", "args": {"std": 0.1}}, {"name": "scale"}]
    cfg["objective"]["terms"].append(  # a term with an adapter: its weights are trained state too
        {
            "loss": "mse",
            "name": "hint",
            "weight": 0.1,
            "student": "blocks.0",
            "teacher": "blocks.1",
            "adapter": "linear",
        }
    )
    cfg["train"] = {**cfg["train"], "grad_accum": 2, "clip_grad_norm": 1.0, **train}
    return cfg


@pytest.mark.parametrize("stop_at", [7, 10])  # mid-epoch (5 steps per epoch) and an epoch boundary
def test_stop_and_resume_is_bit_identical(tmp_path, stop_at):
    full = run_experiment(parse_config(_resume_cfg(tmp_path, "full")))
    part = run_experiment(parse_config(_resume_cfg(tmp_path, "part", max_steps=stop_at)))
    assert not part["complete"] and part["steps"] == stop_at
    resumed = run_experiment(parse_config(_resume_cfg(tmp_path, "part")), resume=True)
    assert resumed["complete"] and resumed["steps"] == full["steps"]
    a = load_checkpoint(tmp_path / "full/checkpoints/last.safetensors")
    b = load_checkpoint(tmp_path / "part/checkpoints/last.safetensors")
    for key, value in a["modules"].items():
        assert torch.equal(value, b["modules"][key]), key
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])
    rows_a = [json.loads(x) for x in (tmp_path / "full/metrics.jsonl").read_text().splitlines()]
    rows_b = [json.loads(x) for x in (tmp_path / "part/metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows_b] == [1, 2, 3]
    assert rows_a == rows_b  # the logged rows match too, train-loss means included
    assert resumed["test_acc"] == full["test_acc"]


def test_gradient_accumulation_matches_a_big_batch(tmp_path):
    # 443 samples leave 320 for training after the test/val splits: 5 batches of 64 = 10 of 32.
    data = {
        "name": "synthetic",
        "options": {"num_samples": 443, "num_features": 8, "num_classes": 3},
    }
    big = synthetic_cfg(
        tmp_path / "big", data=data, train={"batch_size": 64, "schedule": {"name": "constant"}}
    )
    small = synthetic_cfg(
        tmp_path / "small",
        data=data,
        train={"batch_size": 32, "grad_accum": 2, "schedule": {"name": "constant"}},
    )
    run_experiment(parse_config(big))
    run_experiment(parse_config(small))
    a = load_checkpoint(tmp_path / "big/checkpoints/last.safetensors")["modules"]
    b = load_checkpoint(tmp_path / "small/checkpoints/last.safetensors")["modules"]
    assert len(b) == 4
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5), key


def test_lr_schedules():
    cos = ScheduleSettings(name="cosine", warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(0, 110, cos) == pytest.approx(0.1)
    assert lr_factor(9, 110, cos) == pytest.approx(1.0)
    assert lr_factor(10, 110, cos) == pytest.approx(1.0)
    assert lr_factor(60, 110, cos) == pytest.approx(0.55)
    assert lr_factor(110, 110, cos) == pytest.approx(0.1)
    step = ScheduleSettings(name="step", milestones=(0.5, 0.75), gamma=0.1)
    assert [lr_factor(s, 100, step) for s in (0, 49, 50, 74, 75)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01]
    )
    assert lr_factor(50, 100, ScheduleSettings(name="constant")) == 1.0


def test_teacher_is_frozen_and_in_eval_mode(tmp_path):
    teacher_path = make_teacher(
        tmp_path / "teacher.safetensors", {"hidden": [32, 32], "dropout": 0.5}
    )
    cfg = kd_cfg(tmp_path / "r", teacher_path)
    cfg["teacher"]["args"] = {"hidden": [32, 32], "dropout": 0.5}
    built = build(parse_config(cfg))
    before = {k: v.clone() for k, v in built.teacher.state_dict().items()}
    trainer = Trainer(
        built.scheme, built.data.train, built.data.val, built.cfg.train, run_dir=tmp_path / "r"
    )
    trainer.fit()
    assert not built.teacher.training
    assert all(not p.requires_grad and p.grad is None for p in built.teacher.parameters())
    assert all(torch.equal(before[k], v.cpu()) for k, v in built.teacher.state_dict().items())
    assert not any(
        p is q
        for p in built.teacher.parameters()
        for g in trainer.optimizer.param_groups
        for q in g["params"]
    )


def test_existing_run_dir_is_not_overwritten_silently(tmp_path):
    cfg = parse_config(synthetic_cfg(tmp_path / "r", train={"epochs": 1}))
    run_experiment(cfg)
    with pytest.raises(ConfigError, match="already holds a run"):
        run_experiment(cfg)
    run_experiment(cfg, overwrite=True)
    with pytest.raises(ConfigError, match="nothing to resume"):
        run_experiment(parse_config(synthetic_cfg(tmp_path / "fresh")), resume=True)


def test_bf16_autocast_trains(tmp_path):
    res = run_experiment(parse_config(synthetic_cfg(tmp_path / "r", train={"precision": "bf16"})))
    assert res["test_acc"] > 0.8


def test_early_stopping(tmp_path):
    cfg = synthetic_cfg(
        tmp_path / "r",
        train={"epochs": 50, "early_stop_patience": 2, "optimizer": {"name": "sgd", "lr": 1e-9}},
    )
    res = run_experiment(parse_config(cfg))
    assert res["epochs"] == 3  # epoch 1 sets the best; 2 and 3 do not improve on it


def test_resume_keeps_loss_state_memory_banks_and_queues(tmp_path):
    teacher = make_teacher(tmp_path / "teacher.safetensors")

    def cfg(run, **train):
        c = kd_cfg(tmp_path / run, teacher)
        c["objective"]["terms"] += [
            {
                "loss": "crd",
                "weight": 0.5,
                "student": "blocks.0",
                "teacher": "blocks.1",
                "args": {"num_negatives": 16, "dim": 8},
            },
            {
                "loss": "seed",
                "weight": 0.5,
                "student": "blocks.0",
                "teacher": "blocks.1",
                "args": {"queue_size": 40},
            },
        ]
        c["train"] = {**c["train"], **train}
        return parse_config(c)

    run_experiment(cfg("full"))
    run_experiment(cfg("part", max_steps=13))
    run_experiment(cfg("part"), resume=True)
    a = load_checkpoint(tmp_path / "full/checkpoints/last.safetensors")["modules"]
    b = load_checkpoint(tmp_path / "part/checkpoints/last.safetensors")["modules"]
    assert any("bank_s" in k for k in a) and any("queue" in k for k in a)
    for key, value in a.items():
        assert torch.equal(value, b[key]), key


def test_epoch_callbacks_see_each_row_and_can_stop_the_run(tmp_path):
    seen = []

    class Stop(Exception):
        """Raised by the callback to end the run early."""

    def callback(row):
        seen.append(row["epoch"])
        if row["epoch"] == 2:
            raise Stop

    with pytest.raises(Stop):
        run_experiment(
            parse_config(synthetic_cfg(tmp_path / "r", train={"epochs": 5})), callbacks=[callback]
        )
    assert seen == [1, 2]
    assert (
        load_checkpoint(tmp_path / "r/checkpoints/last.safetensors")["trainer"]["epoch"] == 2
    )  # consistent


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_optimizer_kernels_take_the_same_steps(name):
    """impl auto picks the fused kernel for float CPU parameters; every kernel computes the
    same update (to float32 rounding)."""
    from distill.core.settings import TrainSettings
    from distill.loop.optim import make_optimizer

    results = {}
    for impl in ("auto", "fused", "foreach", "loop"):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3))
        settings = TrainSettings(
            optimizer={"name": name, "lr": 0.01, "weight_decay": 0.1, "impl": impl}
        )
        opt = make_optimizer(list(model.parameters()), settings)
        if impl in ("auto", "fused"):
            assert opt.defaults["fused"] is True
        else:
            assert not opt.defaults.get("fused")
            assert opt.defaults["foreach"] is (impl == "foreach")
        x = torch.randn(16, 5, generator=torch.Generator().manual_seed(1))
        for _ in range(5):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
        results[impl] = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    for impl, flat in results.items():
        torch.testing.assert_close(flat, results["loop"], rtol=1e-5, atol=1e-6, msg=impl)


class _ItemsOnly(torch.utils.data.Dataset):
    """A map-style dataset without .batch(): collated sample by sample."""

    def __init__(self, data):
        self.data = data

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        return self.data[i]


def test_dataloader_workers_feed_the_same_batches(tmp_path):
    """train.workers > 0 prefetches in worker processes, in the loop's exact order: the
    weights equal a run collating in the loop, also across a stop and resume mid-epoch."""
    weights = {}
    for name, workers, stop in (("inline", 0, None), ("workers", 2, None), ("resumed", 2, 17)):
        cfg = synthetic_cfg(tmp_path / name, train={"workers": workers, "epochs": 2})
        built = build(parse_config(cfg))

        def trainer(max_steps=None, built=built, cfg=cfg, name=name):
            settings = built.cfg.train.model_copy(update={"max_steps": max_steps})
            return Trainer(
                built.scheme,
                _ItemsOnly(built.data.train),
                built.data.val,
                settings,
                run_dir=tmp_path / name,
            )

        if stop is None:
            trainer().fit()
        else:
            trainer(max_steps=stop).fit()  # 17 steps: inside epoch 2 (9 batches an epoch)
            trainer().fit(resume=True)
        weights[name] = built.student.state_dict()
    for name in ("workers", "resumed"):
        for key, value in weights["inline"].items():
            torch.testing.assert_close(weights[name][key], value, rtol=0, atol=0)


def test_compiled_models_train_the_same_weights(tmp_path):
    """train.compile runs student and teacher through torch.compile (here its aot_eager
    backend: graph capture of forward and backward without code generation, which keeps
    the test fast); feature taps still work and the weights equal an eager run."""
    teacher = make_teacher(tmp_path / "teacher.safetensors")
    hint = {"loss": "mse", "weight": 0.1, "student": "blocks.0", "teacher": "blocks.1"}
    hint["adapter"] = "linear"
    weights = {}
    for name, compile_ in (("eager", False), ("compiled", True)):
        cfg = kd_cfg(tmp_path / name, teacher)
        cfg["objective"]["terms"].append(hint)
        cfg["train"].update(epochs=2, cache={"mode": "off"})
        cfg["train"]["compile"] = {"enabled": compile_, "backend": "aot_eager"}
        built = build(parse_config(cfg))
        Trainer(
            built.scheme, built.data.train, built.data.val, built.cfg.train, run_dir=tmp_path / name
        ).fit()
        assert (getattr(built.student, "_compiled_call_impl", None) is not None) == compile_
        assert (getattr(built.teacher, "_compiled_call_impl", None) is not None) == compile_
        weights[name] = built.scheme.modules.state_dict()
    assert weights["eager"].keys() == weights["compiled"].keys()  # no wrapper prefixes
    for key, value in weights["eager"].items():
        torch.testing.assert_close(weights["compiled"][key], value, rtol=1e-5, atol=1e-6)


def test_channels_last_trains_image_models_alike(tmp_path):
    """train.channels_last stores 2-D conv weights and image batches as NHWC; training
    follows the default layout's run (to float rounding)."""
    weights = {}
    for name, nhwc in (("nchw", False), ("nhwc", True)):
        cfg = synthetic_cfg(
            tmp_path / name,
            data={"name": "digits", "options": {}},
            student={"name": "convnet", "args": {"channels": [4, 8], "kernel_size": 3}},
            train={"epochs": 1, "channels_last": nhwc},
        )
        built = build(parse_config(cfg))
        trainer = Trainer(
            built.scheme, built.data.train, built.data.val, built.cfg.train, run_dir=tmp_path / name
        )
        convs = [m for m in built.student.modules() if isinstance(m, torch.nn.Conv2d)]
        conv = convs[-1]  # 8 x 4 x 3 x 3: one layout or the other, never both
        assert conv.weight.is_contiguous(memory_format=torch.channels_last) == nhwc
        assert conv.weight.is_contiguous() != nhwc
        trainer.fit()
        weights[name] = {k: v.contiguous() for k, v in built.student.state_dict().items()}
    for key, value in weights["nchw"].items():
        torch.testing.assert_close(weights["nhwc"][key], value, rtol=1e-4, atol=1e-5)


def test_metrics_rows_are_appended_and_a_cut_row_is_repaired(tmp_path):
    from distill.core.logs import MetricsLog

    log = MetricsLog(tmp_path)
    log.keep_epochs_before(1)
    log.append({"epoch": 1, "loss": 0.5})
    first = (tmp_path / "metrics.jsonl").stat().st_ino
    log.append({"epoch": 2, "loss": 0.4})
    assert (tmp_path / "metrics.jsonl").stat().st_ino == first  # appended, not replaced
    log.append({"epoch": 3, "loss": 0.3, "val_acc": 0.9})  # a new column: rewritten
    assert (tmp_path / "metrics.csv").read_text().splitlines() == [
        "epoch,loss,val_acc",
        "1,0.5,",
        "2,0.4,",
        "3,0.3,0.9",
    ]
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 4, "lo')  # killed mid-write
    again = MetricsLog(tmp_path)
    assert [r["epoch"] for r in again.rows] == [1, 2, 3]
    again.keep_epochs_before(4)
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 3


@pytest.mark.parametrize("max_steps", [2, 30])  # before the first epoch ends, and after it
def test_a_run_stopped_by_max_steps_is_tested_and_says_which_weights(tmp_path, max_steps):
    from distill.core.rundir import finished

    cfg = parse_config(synthetic_cfg(tmp_path / "r", train={"epochs": 5, "max_steps": max_steps}))
    result = run_experiment(cfg)
    saved = json.loads((tmp_path / "r" / "results.json").read_text())
    assert saved == json.loads(json.dumps(result)) and not saved["complete"]
    assert 0.0 <= saved["test_acc"] <= 1.0 and "test_nll" in saved
    if saved["epochs"] == 0:
        assert saved["tested"].startswith("final weights (step 2")
        assert saved["best_val_acc"] is None
    else:
        assert saved["tested"] == f"best weights (epoch {saved['best_epoch']})"
    assert not finished(tmp_path / "r")  # bench / stages / compress resume it, not skip it
    back = run_experiment(
        parse_config(synthetic_cfg(tmp_path / "r", train={"epochs": 5})), resume=True
    )
    assert back["complete"] and finished(tmp_path / "r")


def test_eval_every_validates_on_its_cadence_and_after_the_last_epoch(tmp_path):
    res = run_experiment(
        parse_config(synthetic_cfg(tmp_path / "r", train={"epochs": 5, "eval_every": 2}))
    )
    rows = [json.loads(x) for x in (tmp_path / "r/metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5]
    assert [("val_acc" in r) for r in rows] == [False, True, False, True, True]
    assert all("train_loss" in r for r in rows)
    best = max((r for r in rows if "val_acc" in r), key=lambda r: r["val_acc"])
    assert res["best_val_acc"] == pytest.approx(best["val_acc"])
    header = (tmp_path / "r/metrics.csv").read_text().splitlines()
    assert len(header) == 6 and "val_acc" in header[0]


def test_eval_every_steps_validates_within_epochs_and_resumes_without_losing_rows(tmp_path):
    """Validation every 3 steps logs a row at the epoch's fraction done (epoch ends are then
    validated only at the last); a run cut mid-epoch resumes from its step checkpoint, drops
    the rows written after it, and ends with the uninterrupted run's weights and rows."""
    train = {"epochs": 2, "eval_every_steps": 3, "checkpoint_every_steps": 4}
    full = run_experiment(parse_config(_resume_cfg(tmp_path, "full", **train)))
    rows = [json.loads(x) for x in (tmp_path / "full/metrics.jsonl").read_text().splitlines()]
    steps = full["steps"]
    per_epoch = steps // 2
    within = [r for r in rows if r["epoch"] not in (1, 2)]
    assert [r["step"] for r in within] == [s for s in range(3, steps + 1, 3) if s % per_epoch]
    assert all("val_acc" in r and "train_loss" in r for r in within)
    for r in within:  # the epoch in progress and the fraction of its batches done
        assert int(r["epoch"]) == r["step"] // per_epoch and 0 < r["epoch"] % 1 < 1
    # grad_accum 2 over 9 batches: step 3 is batch 6 of 9 (the last step has one batch)
    assert within[0]["epoch"] == pytest.approx(6 / 9, abs=1e-4)
    assert [r["epoch"] for r in rows] == sorted(r["epoch"] for r in rows)
    ends = {r["epoch"]: r for r in rows if r["epoch"] in (1, 2)}
    assert "val_acc" not in ends[1] and "val_acc" in ends[2]
    best = max((r for r in rows if "val_acc" in r), key=lambda r: r["val_acc"])
    assert full["best_val_acc"] == pytest.approx(best["val_acc"])

    class Stop(Exception):
        """Raised at the validation of step 9 (after the checkpoint of step 8, mid-epoch)."""

    def cut(row):
        if row["step"] == 9:
            raise Stop

    with pytest.raises(Stop):
        run_experiment(parse_config(_resume_cfg(tmp_path, "part", **train)), callbacks=[cut])
    assert load_checkpoint(tmp_path / "part/checkpoints/last.safetensors")["trainer"]["step"] == 8
    resumed = run_experiment(parse_config(_resume_cfg(tmp_path, "part", **train)), resume=True)
    assert resumed["complete"] and resumed["best_val_acc"] == full["best_val_acc"]
    a = load_checkpoint(tmp_path / "full/checkpoints/last.safetensors")
    b = load_checkpoint(tmp_path / "part/checkpoints/last.safetensors")
    for key, value in a["modules"].items():
        assert torch.equal(value, b["modules"][key]), key
    rows_b = [json.loads(x) for x in (tmp_path / "part/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows_b] == [r["step"] for r in rows]
    for ra, rb in zip(rows, rows_b):
        assert (
            ra.keys() == rb.keys()
            and ra["val_acc" if "val_acc" in ra else "step"]
            == (rb["val_acc" if "val_acc" in rb else "step"])
        )


def test_early_stopping_counts_validations_within_an_epoch(tmp_path):
    """With eval_every_steps 1 and patience 2, the run stops mid-epoch at the second
    validation in a row without a better score, and leaves its checkpoint at that step."""
    cfg = synthetic_cfg(
        tmp_path / "r",
        train={
            "epochs": 50,
            "eval_every_steps": 1,
            "early_stop_patience": 2,
            "optimizer": {"name": "adamw", "lr": 1e-6},
        },  # no step improves the score
    )
    res = run_experiment(parse_config(cfg))
    assert res["stopped_by"] == "early_stop" and res["complete"] and res["epochs"] == 0
    rows = [json.loads(x) for x in (tmp_path / "r/metrics.jsonl").read_text().splitlines()]
    scores = [r["val_acc"] for r in rows]
    assert len(rows) == 3 and scores[1] <= scores[0] and scores[2] <= scores[0]
    ckpt = load_checkpoint(tmp_path / "r/checkpoints/last.safetensors")
    assert ckpt["trainer"]["step"] == rows[-1]["step"] == 3


def test_checkpoint_every_and_a_resume_from_an_older_checkpoint(tmp_path):
    """With checkpoint_every 2, a run cut after epoch 3 resumes from epoch 2's checkpoint,
    redoes epoch 3, and ends with the uninterrupted run's weights and rows."""
    train = {"epochs": 4, "checkpoint_every": 2}
    full = run_experiment(parse_config(_resume_cfg(tmp_path, "full", **train)))

    class Stop(Exception):
        """Raised after epoch 3."""

    def cut(row):
        if row["epoch"] == 3:
            raise Stop

    with pytest.raises(Stop):
        run_experiment(parse_config(_resume_cfg(tmp_path, "part", **train)), callbacks=[cut])
    ckpt = load_checkpoint(tmp_path / "part/checkpoints/last.safetensors")
    assert ckpt["trainer"]["epoch"] == 2  # epoch 3 was not checkpointed
    resumed = run_experiment(parse_config(_resume_cfg(tmp_path, "part", **train)), resume=True)
    assert resumed["complete"] and resumed["steps"] == full["steps"]
    a = load_checkpoint(tmp_path / "full/checkpoints/last.safetensors")
    b = load_checkpoint(tmp_path / "part/checkpoints/last.safetensors")
    for key, value in a["modules"].items():
        assert torch.equal(value, b["modules"][key]), key
    rows_a = [json.loads(x) for x in (tmp_path / "full/metrics.jsonl").read_text().splitlines()]
    rows_b = [json.loads(x) for x in (tmp_path / "part/metrics.jsonl").read_text().splitlines()]
    assert rows_a == rows_b and [r["epoch"] for r in rows_b] == [1, 2, 3, 4]


def test_a_run_saved_before_a_setting_existed_resumes(tmp_path):
    """A config.yaml written by an older distill lacks settings added since: they take
    their defaults on resume and are not refused as changes."""
    import yaml

    cfg = synthetic_cfg(tmp_path / "r", train={"epochs": 3, "max_steps": 12})
    part = run_experiment(parse_config(cfg))
    assert not part["complete"]
    saved = tmp_path / "r/config.yaml"
    old = yaml.safe_load(saved.read_text())
    for key in ("eval_every", "checkpoint_every", "eval_every_steps"):  # added since
        old["train"].pop(key)
    old["objective"].pop("label_smoothing")  # (one that may not change on resume)
    saved.write_text(yaml.safe_dump(old))
    cfg["train"].pop("max_steps")
    assert run_experiment(parse_config(cfg), resume=True)["complete"]


def test_no_progress_bar_makes_no_tqdm(monkeypatch):
    """With train.progress off the loop creates no tqdm at all: even a disabled bar starts
    tqdm's monitor thread, which competes with training on a busy CPU."""
    from types import SimpleNamespace

    import distill.loop.progress as progress

    made = []

    def fake_tqdm(**kwargs):
        made.append(kwargs)
        return SimpleNamespace(disable=False)

    monkeypatch.setattr(progress, "tqdm", fake_tqdm)
    t = SimpleNamespace(
        settings=SimpleNamespace(progress=False, epochs=2),
        state={"epoch": 0, "batch": 0},
        batches_per_epoch=3,
    )
    with progress.EpochProgress(t) as bar:
        bar.update()
    assert made == []
    t.settings.progress = True
    assert progress.EpochProgress(t).bar is not None
    assert made and made[0]["total"] == 3


def test_metrics_rows_are_written_by_the_writer_in_order_with_checkpoints(tmp_path):
    """With the loop's writer the metrics files are written on its thread: nothing before
    it runs, and a job submitted after a row (the epoch's checkpoint) sees the row."""
    import csv

    from distill.core.logs import MetricsLog
    from distill.core.writer import BackgroundWriter

    writer = BackgroundWriter()
    log = MetricsLog(tmp_path, writer=writer)
    seen = []
    with writer.held():
        log.keep_epochs_before(1)
        log.append({"epoch": 1, "loss": 0.5})
        log.append({"epoch": 2, "loss": 0.25})
        log.append({"epoch": 3, "loss": 0.125, "val_acc": 0.75})  # a new column: rewritten
        writer.submit(lambda: seen.append(log.jsonl.read_text().count("\n")))
        assert not log.jsonl.exists()  # held: the loop did not wait for the disk
    writer.wait()
    assert seen == [3]
    rows = [json.loads(line) for line in log.jsonl.read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    with open(log.csv, newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["val_acc"] for r in table] == ["", "", "0.75"]
    log.append({"epoch": 4, "loss": 0.0625, "val_acc": 0.8})
    writer.wait()
    assert MetricsLog(tmp_path).rows[-1] == {"epoch": 4, "loss": 0.0625, "val_acc": 0.8}


def test_best_weights_come_from_the_checkpoints_walk_and_name_their_epoch(tmp_path):
    """`save_epoch` walks the models' state once for the best weights and the checkpoint:
    the student's entries are cut out of it. They must be exactly its own state dict, in
    order, and a model that is not one of the trainer's children is walked on its own."""
    from distill.core.checkpoint import load_weights
    from distill.loop.resume import _eval_weights, modules_state

    cfg = parse_config(synthetic_cfg(tmp_path / "r", train={"epochs": 3}))
    res = run_experiment(cfg)
    weights, info = load_weights(tmp_path / "r/checkpoints/best.safetensors")
    assert info["epoch"] == res["best_epoch"]
    rows = [json.loads(x) for x in (tmp_path / "r/metrics.jsonl").read_text().splitlines()]
    assert info["val_acc"] == rows[res["best_epoch"] - 1]["val_acc"]

    built = build(cfg)
    t = Trainer(built.scheme, built.data.train, built.data.val, cfg.train, run_dir=tmp_path / "t")
    own = t.scheme.eval_model().state_dict()
    cut = _eval_weights(t, modules_state(t))
    assert list(cut) == list(own) and len(own) > 0
    assert all(cut[k].data_ptr() == own[k].data_ptr() for k in own)
    other = torch.nn.Linear(2, 2)  # an evaluated model outside scheme.modules
    t.scheme.eval_model = lambda: other
    assert list(_eval_weights(t, modules_state(t))) == ["weight", "bias"]


def test_generator_states_follow_every_draw_between_checkpoints():
    """`rng_state` reuses its last conversion while numpy's and Python's generators are
    untouched; a draw from either must show in the next state, and restoring it replays."""
    import random

    import numpy as np

    from distill.loop.rng import rng_state, seed_everything, set_rng_state

    gen = torch.Generator().manual_seed(1)
    seed_everything(3)
    first, again = rng_state(gen), rng_state(gen)
    assert torch.equal(first["python"][1], again["python"][1])
    random.random()
    np.random.rand()
    moved = rng_state(gen)
    assert not torch.equal(moved["python"][1], first["python"][1])
    assert not torch.equal(moved["numpy"][1], first["numpy"][1])
    drawn = (random.random(), float(np.random.rand()))
    set_rng_state(moved, gen)
    assert (random.random(), float(np.random.rand())) == drawn
    set_rng_state(first, gen)
    random.random()
    np.random.rand()
    assert (random.random(), float(np.random.rand())) == drawn
