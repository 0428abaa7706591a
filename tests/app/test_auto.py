"""distill auto (issue 41): budgets, candidates, the search space, and the whole command on
the synthetic data: it chooses on validation, reads the test split once at the end, hands
over a student that `distill run` reproduces, survives a kill, and several workers share
one study."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from helpers import synthetic_cfg

from distill.app.auto.candidates import Profile, choose, family_students
from distill.app.auto.settings import (
    Accuracy,
    AutoSettings,
    Budget,
    parse_bytes,
    parse_count,
    parse_ms,
    parse_seconds,
)
from distill.app.auto.space import FEATURE, RESPONSE, objective_for, pair_layers
from distill.app.cli import main
from distill.app.run import run_experiment
from distill.core.config import parse_config
from distill.core.errors import ConfigError
from distill.models import build_model


def test_budgets_read_the_way_people_write_them():
    assert parse_count("2M") == 2_000_000 and parse_count("500k") == 500_000
    assert parse_count(1200) == 1200
    assert parse_bytes("1.5MB") == 1_500_000 and parse_bytes("2MiB") == 2 * 1024**2
    assert parse_ms("3ms") == 3.0 and parse_ms("300us") == pytest.approx(0.3)
    assert parse_seconds("2h") == 7200 and parse_seconds("1h30m") == 5400
    assert parse_seconds(90) == 90
    floor = Accuracy.parse("0.97x")
    assert floor.relative and floor.floor(0.9) == pytest.approx(0.873)
    assert Accuracy.parse("90%").floor(0.5) == pytest.approx(0.9)
    for bad, call in (("lots", parse_count), ("3 parsecs", parse_ms), ("2 weeks", parse_seconds)):
        with pytest.raises(ConfigError, match="cannot read|unknown unit"):
            call(bad)
    with pytest.raises(ConfigError, match="above 1"):
        Accuracy.parse("97")
    budget = Budget(max_params="20k", max_latency_ms="1ms", min_accuracy="0.95x")
    assert budget.max_params == 20_000 and budget.max_latency_ms == 1.0
    assert budget.min_accuracy.relative


def test_students_are_proposed_from_the_teachers_family():
    mlp = family_students({"name": "mlp", "args": {"hidden": [256, 128]}})
    assert {"name": "mlp", "args": {"hidden": [128, 64]}} in mlp
    assert {"name": "mlp", "args": {"hidden": [128]}} in mlp  # one layer fewer
    assert all(s["args"] != {"hidden": [256, 128]} for s in mlp)  # never the teacher itself
    conv = family_students({"name": "convnet", "args": {"channels": [32, 64, 64]}})
    assert {"name": "convnet", "args": {"channels": [8, 16, 16]}} in conv
    res = family_students({"name": "resnet", "args": {"widths": [16, 32], "blocks_per_stage": 2}})
    assert any(s["args"].get("blocks_per_stage") == 1 for s in res)
    vit = family_students({"name": "transformer", "args": {"dim": 64, "depth": 4, "heads": 4}})
    assert all(s["args"]["dim"] % s["args"]["heads"] == 0 for s in vit)
    for spec in vit:  # every proposal builds
        build_model("transformer", (1, 8, 8), 3, spec["args"])
    assert family_students({"name": "mypkg.models:Net", "args": {}}) == []


def _profile(label, params, latency=0.1, over=()):
    return Profile(label, {"name": "mlp", "args": {}}, params, params * 4, latency, over=list(over))


def test_the_budget_keeps_a_spread_of_sizes_and_an_impossible_one_names_the_smallest(tmp_path):
    settings = AutoSettings(
        teacher={"name": "mlp", "weights": "w"}, data={"name": "synthetic"}, max_candidates=3
    )
    teacher = _profile("teacher", 100_000)
    fits = [_profile(f"s{p}", p) for p in (60_000, 50_000, 30_000, 20_000, 9_000, 5_000)]
    chosen = choose(fits, teacher, settings)
    assert [p.params for p in chosen] == [60_000, 30_000, 9_000]  # each <= 0.6x the last
    over = [
        _profile("big", 50_000, over=["50,000 params > 1,000"]),
        _profile("small", 2_000, 0.5, ["0.5 ms > 0.1 ms"]),
    ]
    with pytest.raises(
        ConfigError, match=r"smallest candidate, small, has 2,000 parameters.*0\.5 ms > 0\.1 ms"
    ):
        choose(over, teacher, settings)


def test_an_undecided_verdict_gets_a_second_look_at_more_seeds():
    from distill.app.auto.finals import Arm, bound, decide, more_seeds

    settings = AutoSettings(teacher={"name": "mlp", "weights": "w"}, data={"name": "synthetic"})
    assert settings.max_seeds == 6 and bound(settings) == pytest.approx(0.029)
    student = _profile("s", 1000)
    teacher = _profile("teacher", 5000)
    teacher.val_acc = 0.9

    def arms(best_val, scratch_val):
        return [
            Arm("kd", "finalist", student, "kd", {}, 1e-3, val=best_val),
            Arm("scratch", "scratch", student, "scratch", {}, 1e-3, val=scratch_val),
        ]

    undecided = decide(arms([0.80, 0.83, 0.81], [0.79, 0.80, 0.81]), teacher, settings)
    assert not undecided.distillation_pays and undecided.undecided
    assert 0.029 < undecided.p < 0.3 and undecided.chosen.role == "scratch"
    assert not more_seeds(undecided, settings, most=1)  # one new seed each: not worth it
    assert more_seeds(undecided, settings, most=2)  # as many as the time left allows
    assert undecided.best.seeds == undecided.scratch.seeds == 5
    undecided.best.seeds = undecided.scratch.seeds = 0
    assert more_seeds(undecided, settings)
    assert undecided.best.seeds == undecided.scratch.seeds == 6
    assert not more_seeds(undecided, settings)  # one second look, not a third
    clear = decide(arms([0.80, 0.80, 0.79], [0.81, 0.82, 0.83]), teacher, settings)
    assert not clear.undecided and not more_seeds(clear, settings)  # a loss: settled
    once = settings.model_copy(update={"max_seeds": 3})
    assert bound(once) == 0.05  # one look at 5%
    # no time for a second look (known before the p-value is read): one look at 5%
    assert bound(settings, second_look_fits=False) == 0.05
    p_030 = decide(arms([0.80, 0.83, 0.81], [0.79, 0.80, 0.81]), teacher, settings, False)
    assert not p_030.undecided and not more_seeds(p_030, settings)
    assert not more_seeds(decide(arms([0.80, 0.83, 0.81], [0.79, 0.80, 0.81]), teacher, once), once)
    with pytest.raises(Exception, match="below seeds"):
        AutoSettings(teacher={"name": "mlp", "weights": "w"}, data={"name": "synthetic"},
                     seeds=4, max_seeds=3)  # fmt: skip


def test_the_verdict_counts_the_noise_of_a_finite_validation_set():
    """A gain every seed agrees on but that rests on one validation sample is luck of the
    validation set, not distillation: the paired test over samples says so."""
    import numpy as np

    from distill.app.auto.finals import Arm, decide, paired_p

    assert paired_p(np.ones(100), np.ones(100)) == 1.0  # no sample differs
    one = np.zeros(130)
    one[0] = 1.0  # one image of 130 flips, in every seed
    assert paired_p(one, np.zeros(130)) > 0.1
    many = (np.arange(130) % 4 == 0).astype(float)  # 33 images better, none worse
    assert paired_p(many, np.zeros(130)) < 0.001
    assert paired_p(np.zeros(130), many) > 0.99  # worse is not better
    settings = AutoSettings(
        teacher={"name": "mlp", "weights": "w"}, data={"name": "synthetic"}, max_seeds=3
    )
    student, teacher = _profile("s", 1000), _profile("teacher", 5000)
    teacher.val_acc = 0.99
    kd = Arm("kd", "finalist", student, "kd", {}, 1e-3, val=[0.8077, 0.8076, 0.8078])
    scratch = Arm("scratch", "scratch", student, "scratch", {}, 1e-3, val=[0.80, 0.80, 0.80])
    assert decide([kd, scratch], teacher, settings).distillation_pays  # seeds alone: yes
    kd.hits, scratch.hits = one, np.zeros(130)
    verdict = decide([kd, scratch], teacher, settings)
    assert not verdict.distillation_pays and verdict.chosen is scratch
    assert "over the 130 validation samples (paired)" in verdict.text[1]
    kd.hits = many
    assert decide([kd, scratch], teacher, settings).distillation_pays


def test_layers_are_paired_at_the_classifier_inputs_and_every_method_builds_a_valid_config(
    tmp_path,
):
    student = build_model("convnet", (1, 40), 10, {"channels": [8, 16]})
    teacher = build_model("convnet", (1, 40), 10, {"channels": [32, 64]})
    pairing = pair_layers(student, teacher, 10)
    assert pairing.student == pairing.teacher == "head.1:input"
    assert "classifier" in pairing.why
    resnet = build_model("resnet", (1, 40), 10, {"widths": [8, 16]})
    assert pair_layers(resnet, resnet, 10).student == "fc:input"
    import optuna

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for method in [*RESPONSE, *FEATURE]:
        for trial in (None, study.ask()):
            objective = objective_for(method, trial, pairing)
            cfg = synthetic_cfg(tmp_path / method, scheme="offline", objective=objective)
            cfg["teacher"] = {"name": "mlp", "args": {"hidden": [32]}}
            cfg["student"] = {"name": "mlp", "args": {"hidden": [8]}}
            if method in FEATURE:  # the synthetic pair's own classifier inputs
                for term in objective["terms"][1:]:
                    term["student"] = term["teacher"] = "head:input"
            parse_config(cfg)  # every name, argument and weight is valid


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("auto-teacher")
    cfg = synthetic_cfg(root / "teacher", train={"epochs": 4})
    cfg["data"]["options"] = {"num_samples": 600, "num_features": 8, "num_classes": 3}
    cfg["student"] = {"name": "mlp", "args": {"hidden": [64, 64]}}
    run_experiment(parse_config(cfg))
    (root / "teacher.yaml").write_text(yaml.safe_dump(cfg))
    return root


def _auto_args(root: Path, out: Path, *more: str) -> list[str]:
    return [
        "auto",
        "--teacher",
        str(root / "teacher"),
        "--model-config",
        str(root / "teacher.yaml"),
        "--max-params",
        "3k",
        "--epochs",
        "3",
        "--seeds",
        "2",
        "--out",
        str(out),
        *more,
    ]


def _plain(*more: str) -> tuple[str, ...]:
    """Plain students and one look: the tests of the search's machinery need neither
    compressed students nor a second look at more seeds."""
    return ("--compress", "off", "--max-seeds", "2", *more)


def test_auto_end_to_end_chooses_on_validation_and_hands_over(teacher_run, tmp_path, capsys):
    out = tmp_path / "auto"
    assert main(_auto_args(teacher_run, out, "--trials", "3", "--methods", "kd,dist")) == 0
    printed = capsys.readouterr()
    assert "report:" in printed.out
    for line in ("trial 0: scratch on", "final comparison:", "handing over"):
        assert line in printed.err
    summary = json.loads((out / "auto.json").read_text())
    arms = {a["role"] for a in summary["comparison"]}
    assert {"scratch", "kd"} <= arms  # the baselines are always in the comparison
    # the search never read the test split: no trial's results carry a test score
    for results in (out / "trials").glob("*/results.json"):
        assert "test_acc" not in json.loads(results.read_text())
    for arm in summary["comparison"]:  # ... the final comparison did, once, at the end
        assert len(arm["test_runs"]) == 2 and len(arm["val_runs"]) == 2
    # every searched student fits the budget
    assert all(a["params"] <= 3000 for a in summary["comparison"])
    report = (out / "report.md").read_text()
    for section in ("## Verdict", "## Candidates", "## Final comparison", "## Trials"):
        assert section in report
    # the teacher breaks the budget, so it was offered pruned to fit (KD recovery) too
    assert "teacher pruned 30%" in report and "channels pruned, KD recovery" in report
    shipped = summary["handed_over"]["measured"]  # measured again after training
    assert shipped["params"] <= 3000 and shipped["over"] == []
    assert "handed-over student measured again" in printed.out
    assert (out / "pareto_latency.png").read_bytes()[:4] == b"\x89PNG"
    assert summary["teacher_passes"]["cached"] < summary["teacher_passes"]["live"]
    # best.yaml reproduces the handed-over student with distill run
    best = yaml.safe_load((out / "best.yaml").read_text())
    best["run_dir"] = str(tmp_path / "again")
    best["train"]["progress"] = False
    again = run_experiment(parse_config(best))
    assert again["complete"] and again["test_acc"] > 0.5
    from distill.core.checkpoint import load_weights

    state, _ = load_weights(out / "student.safetensors")
    assert any(k.startswith("head") for k in state)
    _dashboard_serves(out / "study.db")


def _dashboard_serves(db: Path) -> None:
    """optuna-dashboard, the real server a user starts, reads the study as it is: every
    trial, with its student, method and score."""
    import shutil
    import socket
    import urllib.request

    exe = shutil.which("optuna-dashboard")
    if exe is None:
        pytest.skip("optuna-dashboard is not installed (pip install optuna-dashboard)")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [exe, f"sqlite:///{db}", "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}/api/studies"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                studies = json.loads(urllib.request.urlopen(base, timeout=5).read())
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, "no dashboard"
                time.sleep(0.3)
        [summary] = studies["study_summaries"]
        assert summary["study_name"] == "distill-auto"
        detail = json.loads(
            urllib.request.urlopen(f"{base}/{summary['study_id']}?after=0", timeout=10).read()
        )
        optuna_study = _study(db.parent)
        assert len(detail["trials"]) == len(optuna_study.trials)
        names = {p["name"] for t in detail["trials"] for p in t["params"]}
        assert {"student", "method"} <= names
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_teacher_over_the_budget_is_offered_pruned_and_at_int8(teacher_run, tmp_path):
    """The compressed candidates, measured before training: the teacher pruned by the least
    amount that fits (starting from its weights; its scratch baseline from random weights
    of the same shape), and at int8 (QAT from its weights; size = the int8 ONNX file).
    An int8 student trains, and is measured again as it ships."""
    from distill.app.auto.candidates import profile_teacher, propose, spec_for
    from distill.app.auto.compressed import propose_compressed, remeasure
    from distill.app.auto.study import run_config
    from distill.app.build import load_data, weights_path
    from distill.models.weights import restore_weights

    cfg = yaml.safe_load((teacher_run / "teacher.yaml").read_text())
    settings = AutoSettings(
        teacher={**cfg["student"], "weights": str(teacher_run / "teacher")},
        data=cfg["data"],
        budget={"max_size_bytes": "12KB"},
        epochs=2,
        out=str(tmp_path / "auto"),
        progress=False,
    )
    data = load_data(settings.data)
    teacher_model, teacher = profile_teacher(settings, data)
    assert teacher.over  # 4,931 float32 parameters: about 20 KB
    proposed = propose(settings, data, teacher)
    found, notes = propose_compressed(settings, data, teacher_model, teacher, proposed)
    by_kind = {p.route["kind"]: p for p in found}
    assert set(by_kind) == {"prune", "int8"}, notes
    pruned, int8 = by_kind["prune"], by_kind["int8"]
    assert pruned.route["amount"] == 0.3  # 20% pruned is still 13 KB; 30% fits
    assert pruned.size_bytes <= 12_000 < teacher.size_bytes
    # the pruned student starts from the teacher's surviving weights ...
    model = build_model("mlp", data.input_shape, data.num_classes, pruned.spec["args"])
    restore_weights(model, pruned.spec["weights"], "student")
    first = model.blocks[0][0].weight
    assert first.shape == (45, 8)  # 64 hidden units less 30%
    from distill.core.checkpoint import load_weights

    taught, _ = load_weights(weights_path(str(teacher_run / "teacher")))
    assert all(any(torch.equal(row, t) for t in taught["blocks.0.0.weight"]) for row in first)
    # ... its from-scratch baseline from random weights of the same shape
    scratch = spec_for(pruned, "scratch")
    assert scratch["weights"].endswith("scratch-init.safetensors")
    assert scratch["weights"] != pruned.spec["weights"]
    assert int8.size_bytes <= 12_000 and int8.params == teacher.params
    assert spec_for(int8, "scratch").get("weights") is None
    assert spec_for(int8, "scratch")["quantize"] == {"bits": 8}
    run_dir = tmp_path / "int8-run"
    run = run_experiment(
        parse_config(run_config(settings, int8, "kd", {"task_weight": 0.5, "terms": [
            {"loss": "kd", "weight": 0.5}]}, lr=1e-3, seed=0, run_dir=run_dir))
    )  # fmt: skip
    assert run["complete"]
    student = build_model("mlp", data.input_shape, data.num_classes, int8.spec["args"])
    restore_weights(student, weights_path(str(run_dir)), "student")
    shipped = remeasure(student, int8, settings, data)
    assert shipped["over"] == [] and shipped["size_kib"] * 1024 <= 12_000
    assert shipped["onnx_top1_agreement"] >= 0.95
    assert (tmp_path / "auto" / "student-int8.onnx").is_file()


def test_auto_refuses_what_it_cannot_do(teacher_run, tmp_path, capsys):
    assert main(_auto_args(teacher_run, tmp_path / "a", "--max-params", "10")) == 2
    assert "no student fits the budget; the smallest candidate" in capsys.readouterr().err
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine/notes.txt").write_text("mine")
    assert main(_auto_args(teacher_run, tmp_path / "mine", "--trials", "1")) == 2
    assert "holds files distill did not write" in capsys.readouterr().err
    assert (tmp_path / "mine/notes.txt").read_text() == "mine"
    assert main(_auto_args(teacher_run, tmp_path / "b", "--max-latency", "soon")) == 2
    assert "cannot read 'soon'" in capsys.readouterr().err
    url = "postgresql+psycopg://nobody:secret@127.0.0.1:1/none"
    assert main(_auto_args(teacher_run, tmp_path / "c", "--storage", url, "--trials", "1")) == 2
    err = capsys.readouterr().err
    assert "cannot open the study storage" in err and "secret" not in err
    missing = f"sqlite:///{tmp_path / 'none.db'}"
    assert main(["auto", "--join", missing, "--out", str(tmp_path / "j")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "none.db").exists() and not (tmp_path / "j").exists()


def _distill(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "distill", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _study(out: Path):
    """The study, read as a second process would while auto may still be creating its
    database (distill's own storage opener, which waits out that race)."""
    import optuna

    from distill.app.auto.storage import open_storage

    storage = open_storage(f"sqlite:///{out / 'study.db'}")
    return optuna.load_study(study_name="distill-auto", storage=storage)


def _finished_trials(out: Path) -> list[int]:
    try:
        study = _study(out)
    except KeyError:  # the file is there, the study not yet
        return []
    return [t.number for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]


def _wait_for_study(out: Path, proc: subprocess.Popen, seconds: float = 240) -> None:
    """Until the study exists with its settings (what a joining worker reads)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None and proc.returncode != 0:
            raise AssertionError(f"distill auto failed: {proc.communicate()[1][-3000:]}")
        if (out / "study.db").is_file():
            with contextlib.suppress(KeyError):  # the file is there, the study not yet
                if "settings" in _study(out).user_attrs:
                    return
        time.sleep(0.2)
    raise AssertionError("the study was not created in time")


def test_processes_opening_a_fresh_study_database_at_once_all_get_it(tmp_path):
    """Two processes creating one new SQLite study's schema at once collided (alembic's
    version row, "UNIQUE constraint failed"): a worker joining as the study starts, or a
    dashboard, killed `distill auto`. The loser now opens the made database."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    code = f"from distill.app.auto.storage import open_storage; open_storage({url!r})"
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
        for _ in range(4)  # before the fix, such starts often lost a process
    ]
    failed = [p.communicate()[1] for p in procs if p.wait() != 0]
    assert not failed, failed[0][-500:]


def test_a_killed_auto_continues_without_redoing_finished_trials(teacher_run, tmp_path):
    out = tmp_path / "auto"
    args = _auto_args(
        teacher_run, out, *_plain("--trials", "4", "--methods", "kd", "--epochs", "40")
    )
    proc = _distill(*args, cwd=tmp_path)
    _wait_for_study(out, proc)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and len(_finished_trials(out)) < 2:
        time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)  # no cleanup at all
    proc.communicate(timeout=60)
    done = _finished_trials(out)
    cut = _study(out).trials[-1]  # the trial the kill cut short, if one was running
    cut_short = cut.number if cut.state.name == "RUNNING" else None
    assert len(done) >= 2
    stamps = {
        n: (out / f"trials/trial-{n:04d}/results.json").stat().st_mtime_ns
        for n in done
        if (out / f"trials/trial-{n:04d}/results.json").is_file()
    }
    again = _distill(*args, cwd=tmp_path)
    _, err = again.communicate(timeout=600)
    assert again.returncode == 0, err
    for n, stamp in stamps.items():  # finished trials were not run again
        assert (out / f"trials/trial-{n:04d}/results.json").stat().st_mtime_ns == stamp
    assert set(done) <= set(_finished_trials(out))
    assert (out / "report.md").is_file()
    if cut_short is not None:  # tried again in its own run dir, from its checkpoint
        retry = [t for t in _study(out).trials if t.user_attrs.get("retry_of") == cut_short]
        assert len(retry) == 1 and retry[0].state.name in ("COMPLETE", "PRUNED")
        assert retry[0].user_attrs["run_dir"] == cut.user_attrs["run_dir"]


@pytest.mark.slow  # two SQLite workers on one study; the PostgreSQL test below keeps a joining worker in the default run
def test_several_workers_share_one_study(teacher_run, tmp_path):
    out = tmp_path / "main"
    url = f"sqlite:///{out / 'study.db'}"
    args = _auto_args(teacher_run, out, *_plain("--trials", "6", "--methods", "kd,dist"))
    first = _distill(*args, "--max-candidates", "2", cwd=tmp_path)
    _wait_for_study(out, first)
    workers = [  # a worker needs only the URL: the study holds its settings
        _distill(
            "auto", "--join", url, "--out", str(tmp_path / f"w{i}"), "--trials", "6", cwd=tmp_path
        )
        for i in range(2)
    ]
    for proc in [first, *workers]:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
    import optuna

    study = optuna.load_study(study_name="distill-auto", storage=url)
    numbers = [t.number for t in study.trials]
    assert len(numbers) == len(set(numbers))
    ran_here = {p.parent.name for p in (out / "trials").glob("*/config.yaml")}
    ran_by_workers = {
        p.parent.name for w in ("w0", "w1") for p in (tmp_path / w / "trials").glob("*/config.yaml")
    }
    assert ran_by_workers, "the joined workers ran no trial"
    assert not ran_here & ran_by_workers  # no trial was run twice


def test_python_api(teacher_run, tmp_path):
    from distill.app.auto import auto

    result = auto(
        teacher={
            "name": "mlp",
            "args": {"hidden": [64, 64]},
            "weights": str(teacher_run / "teacher"),
        },
        data=yaml.safe_load((teacher_run / "teacher.yaml").read_text())["data"],
        budget={"max_params": "3k"},
        trials=1,
        epochs=2,
        seeds=2,
        methods=["kd"],
        out=str(tmp_path / "py"),
        export="torchscript",
        compress="off",
        max_seeds=2,
        progress=False,
    )
    assert isinstance(result.student, torch.nn.Module)
    assert result.config["student"]["name"] == "mlp" and result.verdict
    assert result.report.is_file() and len(result.trials) >= 3
    assert os.path.isfile(tmp_path / "py" / "best.yaml")
    exported = tmp_path / "py" / "export" / "torchscript"
    info = json.loads((exported / ".distill-export").read_text())
    assert info["max_abs_logit_diff"] < 1e-4  # the export was loaded back and checked


def test_an_auto_section_in_yaml_with_flags_over_it(teacher_run, tmp_path, capsys):
    cfg = yaml.safe_load((teacher_run / "teacher.yaml").read_text())
    spec = {
        "auto": {
            "teacher": {**cfg["student"], "weights": str(teacher_run / "teacher")},
            "data": cfg["data"],
            "budget": {"max_params": "3k", "min_accuracy": "0.5"},
            "epochs": 2,
            "seeds": 2,
            "trials": 1,
            "methods": ["kd"],
            "compress": "off",
            "max_seeds": 2,
            "out": str(tmp_path / "from-yaml"),
        }
    }
    (tmp_path / "auto.yaml").write_text(yaml.safe_dump(spec))
    assert main(["auto", str(tmp_path / "auto.yaml"), "--out", str(tmp_path / "flag")]) == 0
    assert (tmp_path / "flag/report.md").is_file() and not (tmp_path / "from-yaml").exists()
    assert "accuracy floor 50.0% = 50.00%: met" in capsys.readouterr().out


def _pg_tool(name: str) -> str | None:
    import glob
    import shutil

    found = shutil.which(name) or sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found if isinstance(found, str) else (found[-1] if found else None)


@pytest.fixture(scope="module")
def postgres():
    """A real PostgreSQL server on 127.0.0.1, started here and stopped after the tests
    (Debian's postgresql package; as root the server runs as the postgres user)."""
    import shutil
    import socket
    import tempfile

    initdb, pg_ctl, psql = _pg_tool("initdb"), _pg_tool("pg_ctl"), _pg_tool("psql")
    if not (initdb and pg_ctl and psql):
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install psycopg[binary])")
    root = Path(tempfile.mkdtemp(prefix="distill-pg-", dir="/tmp"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root
        shutil.chown(root, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = root / "data"
    run = lambda *cmd: subprocess.run([*as_user, *cmd], capture_output=True, text=True)  # noqa: E731
    done = run(initdb, "-D", str(data), "-U", "distill", "--auth=trust")
    if done.returncode != 0:
        pytest.skip(f"initdb failed here: {done.stderr.strip()[:200]}")
    options = f"-p {port} -h 127.0.0.1 -k {root}"
    done = run(pg_ctl, "-D", str(data), "-o", options, "-l", str(root / "log"), "-w", "start")
    if done.returncode != 0:
        pytest.skip(f"the PostgreSQL server did not start: {done.stderr.strip()[:200]}")
    try:
        run(
            psql,
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-U",
            "distill",
            "-c",
            "create database auto",
            "postgres",
        )
        yield f"postgresql+psycopg://distill@127.0.0.1:{port}/auto"
    finally:
        run(pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


def test_a_study_on_postgresql_is_shared_by_a_joining_worker(teacher_run, tmp_path, postgres):
    args = _auto_args(
        teacher_run, tmp_path / "main", *_plain("--storage", postgres, "--trials", "2")
    )
    assert main([*args, "--methods", "kd"]) == 0
    assert not (tmp_path / "main/study.db").exists()  # the study lives in the server
    worker = _distill(
        "auto", "--join", postgres, "--out", str(tmp_path / "w"), "--trials", "4", cwd=tmp_path
    )
    _, err = worker.communicate(timeout=600)
    assert worker.returncode == 0, err
    import optuna

    study = optuna.load_study(study_name="distill-auto", storage=postgres)
    by_worker = [t for t in study.trials if str(tmp_path / "w") in t.user_attrs.get("run_dir", "")]
    assert by_worker and all(t.state.name in ("COMPLETE", "PRUNED") for t in by_worker)
    assert study.user_attrs["settings"]["methods"] == ["kd"]


def test_a_time_budget_is_kept(teacher_run, tmp_path, capsys):
    """--time covers the whole command, the final runs included: it ends within about one
    trial of the budget (a trial here is well under a second; a final run's process start
    is the slack)."""
    started = time.monotonic()
    assert (
        main(_auto_args(teacher_run, tmp_path / "t", *_plain("--time", "25s", "--methods", "kd")))
        == 0
    )
    took = time.monotonic() - started
    assert took < 25 + 8, took
    assert "trial 4:" in capsys.readouterr().err  # it searched past the baselines


@pytest.mark.slow  # one of the longest end-to-end checks: python -m pytest -m slow
def test_sigterm_stops_auto_cleanly_and_the_rerun_resumes_the_stopped_trial(teacher_run, tmp_path):
    out = tmp_path / "auto"
    args = _auto_args(
        teacher_run, out, *_plain("--trials", "1", "--methods", "kd", "--epochs", "120")
    )
    args += ["--max-candidates", "1"]
    proc = _distill(*args, cwd=tmp_path)
    _wait_for_study(out, proc)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not (out / "trials/trial-0001/metrics.jsonl").exists():
        time.sleep(0.1)  # trial 1 (KD at its defaults) is training
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM while training trial" in err and "Traceback" not in err
    stopped = [t for t in _study(out).trials if t.user_attrs.get("interrupted")]
    assert len(stopped) == 1
    again = _distill(*args, cwd=tmp_path)
    _, err = again.communicate(timeout=600)
    assert again.returncode == 0, err
    retry = [t for t in _study(out).trials if t.user_attrs.get("retry_of") == stopped[0].number]
    assert len(retry) == 1 and retry[0].user_attrs["run_dir"] == stopped[0].user_attrs["run_dir"]
