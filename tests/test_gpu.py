"""CUDA paths: mixed precision, device placement of every scheme's modules, resume on GPU.

Skipped where no CUDA device is present (CI); run on a GPU machine with
`python -m pytest -q tests/test_gpu.py`.
"""

from __future__ import annotations

import pytest
import torch
from helpers import kd_cfg, make_teacher, run_fsdp_worker, synthetic_cfg

from distill.app.build import build
from distill.app.run import run_experiment
from distill.core.checkpoint import load_checkpoint
from distill.core.config import parse_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

MLP_T = {"name": "mlp", "args": {"hidden": [32, 32]}}


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_offline_kd_on_cuda(tmp_path, precision):
    teacher = make_teacher(tmp_path / "t.safetensors")
    cfg = kd_cfg(tmp_path / "run", teacher)
    cfg["train"] = {**cfg["train"], "device": "cuda", "precision": precision}
    result = run_experiment(parse_config(cfg))
    assert result["complete"] and result["test_acc"] > 0.5
    state = load_checkpoint(tmp_path / "run/checkpoints/last.safetensors")
    assert state["trainer"]["epoch"] == 3


def test_resume_on_cuda_matches_uninterrupted(tmp_path):
    teacher = make_teacher(tmp_path / "t.safetensors")
    base = kd_cfg(tmp_path / "a", teacher)
    base["train"] = {**base["train"], "device": "cuda", "deterministic": True}
    full = run_experiment(parse_config(base))
    cut = {**base, "run_dir": str(tmp_path / "b"), "train": {**base["train"], "max_steps": 17}}
    run_experiment(parse_config(cut))
    resumed = run_experiment(parse_config({**base, "run_dir": str(tmp_path / "b")}), resume=True)
    assert resumed["test_acc"] == pytest.approx(full["test_acc"], abs=1e-6)


SCHEMES = [
    ("dml", {"num_peers": 2}, {}),
    ("one", {"shared": ["blocks.0"]}, {}),
    ("okddip", {}, {}),
    ("ffl", {"layer": "blocks.1"}, {}),
    ("byot", {"heads": ["blocks.0"]}, {}),
    ("pskd", {}, {}),
    ("mean_teacher", {}, {"augment": [{"name": "noise", "args": {"std": 0.1}}]}),
    ("consistency", {}, {"augment": [{"name": "noise", "args": {"std": 0.1}}]}),
    ("cskd", {}, {"augment": [{"name": "noise", "args": {"std": 0.1}}]}),
    ("bake", {}, {}),
    ("sd_dropout", {}, {}),
    ("uskd", {"feature": "blocks.0"}, {}),
    ("dtskd", {"layers": ["blocks.0", "blocks.1"]}, {}),
    ("multi_teacher", {"weighting": "rl"}, {}),
    ("multi_teacher", {"weighting": "gate"}, {}),
    ("multi_teacher", {"weighting": "validation"}, {}),
]


@pytest.mark.parametrize(
    "scheme,args,data", SCHEMES, ids=[f"{s}-{a.get('weighting', '')}" for s, a, _ in SCHEMES]
)
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_scheme_on_cuda(tmp_path, scheme, args, data, precision):
    cfg = synthetic_cfg(tmp_path / "run")
    cfg["scheme"] = {"name": scheme, "args": args}
    cfg["student"] = {"name": "mlp", "args": {"hidden": [16, 16]}}
    cfg["data"] = {**cfg["data"], **data}
    cfg["train"] = {**cfg["train"], "device": "cuda", "precision": precision}
    if scheme == "multi_teacher":
        cfg["teachers"] = [
            {**MLP_T, "weights": str(make_teacher(tmp_path / f"t{i}.safetensors"))}
            for i in range(2)
        ]
    built = build(parse_config(cfg))
    built.scheme.to(torch.device("cuda"))
    tensors = list(built.scheme.modules.parameters()) + list(built.scheme.modules.buffers())
    assert all(t.is_cuda for t in tensors)
    result = run_experiment(parse_config(cfg))
    assert result["complete"] and result["test_acc"] > 0.4


CONV = {"name": "convnet", "args": {"channels": [4, 8], "kernel_size": 3}}
DIGITS = {"name": "digits", "options": {}}
PLAYERS = [
    ("adversarial", {"compare": "logits"}),
    (
        "adversarial",
        {"compare": "features", "student_layer": "blocks.1", "teacher_layer": "blocks.1"},
    ),
    ("ard", {"steps": 2}),
    ("pgd_at", {"steps": 2}),
    ("dafl", {}),
    ("dfad", {}),
    ("deep_inversion", {"bank": 64, "iterations": 5}),
]


@pytest.mark.parametrize(
    "scheme,args", PLAYERS, ids=[f"{s}-{a.get('compare', '')}" for s, a in PLAYERS]
)
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_generator_and_discriminator_schemes_on_cuda(tmp_path, scheme, args, precision):
    """Second players (discriminators, generators, attacks, the synthesised bank) live on
    the run's device and train under autocast."""
    one = parse_config(synthetic_cfg(tmp_path / "t", data=DIGITS, student=CONV))
    weights = tmp_path / "teacher.safetensors"
    from distill.core.checkpoint import save_weights

    save_weights(weights, build(one).student)
    cfg = synthetic_cfg(tmp_path / "run", data=DIGITS, student=CONV)
    cfg["scheme"] = {"name": scheme, "args": args}
    if scheme != "pgd_at":
        cfg["teacher"] = {**CONV, "weights": str(weights)}
    data_free = scheme in ("dafl", "dfad", "deep_inversion")
    terms = [] if data_free else [{"loss": "kd", "weight": 0.5}]
    if scheme == "ard":
        terms = []
    cfg["objective"] = {"task_weight": 0.0 if data_free else 0.5, "terms": terms}
    if scheme == "pgd_at":
        cfg["objective"] = {"task_weight": 1.0}
    cfg["train"] = {**cfg["train"], "epochs": 1, "device": "cuda", "precision": precision}
    result = run_experiment(parse_config(cfg))
    assert result["complete"]
    state = load_checkpoint(tmp_path / "run/checkpoints/last.safetensors")
    assert all(torch.isfinite(v).all() for v in state["modules"].values() if v.is_floating_point())


def test_inductor_compile_and_channels_last_on_cuda(tmp_path):
    """torch.compile with its default (inductor) backend generates CUDA kernels; the trained
    weights follow eager's to kernel rounding, with and without channels_last."""
    weights = {}
    for name, compile_, nhwc in (
        ("eager", False, False),
        ("inductor", True, False),
        ("nhwc", False, True),
    ):
        cfg = synthetic_cfg(tmp_path / name, data=DIGITS, student=CONV)
        cfg["train"] = {
            **cfg["train"],
            "epochs": 2,
            "device": "cuda",
            "deterministic": True,
            "compile": {"enabled": compile_},
            "channels_last": nhwc,
        }
        result = run_experiment(parse_config(cfg))
        assert result["complete"]
        weights[name] = load_checkpoint(tmp_path / name / "checkpoints/last.safetensors")
    for other in ("inductor", "nhwc"):
        for key, value in weights["eager"]["modules"].items():
            torch.testing.assert_close(
                weights[other]["modules"][key], value, rtol=1e-3, atol=1e-4, msg=key
            )


def test_fsdp_units_on_cuda_with_nccl():
    """FSDP2 on CUDA under an NCCL process group (one rank: this machine's one GPU): the
    tied-weight, parent-parameter model of fsdp_worker.py trains like its unsharded copy,
    and gathered optimizer state reloads bit for bit."""
    run_fsdp_worker(1, FSDP_WORKER_DEVICE="cuda")


@pytest.mark.parametrize(
    "student,scheme",
    [
        ({"quantize": {"bits": 4, "act_bits": 4}}, "offline"),
        ({"quantize": {"bits": 4, "act_bits": 4}}, "speq"),
        ({"quantize": {"bits": 8}}, "qkd"),
        ({"sparsity": {"amount": 0.5, "end_step": 10, "every": 2}}, "offline"),
    ],
    ids=["qat-kd", "speq", "qkd", "sparsity"],
)
def test_compression_while_training_on_cuda(tmp_path, student, scheme):
    """Fake quantizers, their observers, SPEQ's stochastic teacher, QKD's phases and the
    pruning masks all run on the GPU; the saved weights reload on the CPU."""
    from distill.app.assess import load_run

    teacher = make_teacher(tmp_path / "t.safetensors")
    cfg = kd_cfg(tmp_path / "run", teacher)
    cfg["student"] = {**cfg["student"], **student}
    if scheme == "speq":
        cfg["teacher"], cfg["objective"]["terms"] = None, []
    if scheme == "qkd":
        cfg["objective"]["terms"] = []
    cfg["scheme"] = {
        "name": scheme,
        "args": {"self_study": 5, "co_study": 5} if scheme == "qkd" else {},
    }
    cfg["train"] = {**cfg["train"], "device": "cuda"}
    result = run_experiment(parse_config(cfg))
    assert result["complete"] and result["test_acc"] > 0.4
    model, _data, _path = load_run(tmp_path / "run")
    assert next(model.parameters()).device.type == "cpu"


@pytest.mark.parametrize("scheme", ["ddpm", "progressive", "dkdm"])
def test_diffusion_schemes_on_cuda(tmp_path, scheme):
    """Denoisers, DDIM sampling, progressive targets and the data-free pool on the GPU,
    under bf16 autocast; sample quality is measured at the end."""
    from distill.core.checkpoint import save_weights
    from distill.models import build_model

    denoiser = {"name": "mlp_denoiser", "args": {"width": 32, "depth": 1}}
    cfg = synthetic_cfg(tmp_path / "run", data={"name": "digits_2d", "options": {}})
    args = {"rescale": False, "eval_samples": 50}
    if scheme == "progressive":
        args["teacher_steps"] = 8
    if scheme == "dkdm":
        args.update(teacher_steps=4, pool=16, student_steps=4)
    cfg["scheme"] = {"name": scheme, "args": args}
    cfg["student"] = denoiser
    if scheme != "ddpm":
        save_weights(
            tmp_path / "t.safetensors", build_model("mlp_denoiser", (2,), 10, denoiser["args"])
        )
        cfg["teacher"] = {**denoiser, "weights": str(tmp_path / "t.safetensors")}
    cfg["train"] = {**cfg["train"], "device": "cuda", "precision": "bf16", "monitor": "nll"}
    result = run_experiment(parse_config(cfg))
    assert result["complete"] and "test_mmd" in result


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_graph_lifelong_and_ensemble_schemes_on_cuda(tmp_path, precision):
    """LSP through the GNN taps, LwF + EWC anchors and MUNGE batches, all on the GPU."""
    train = {"device": "cuda", "precision": precision, "epochs": 2}
    graph_data = {
        "name": "graph",
        "options": {"base": "synthetic", "k": 3, "num_samples": 400, "num_classes": 3},
    }
    gnn = {"name": "gnn", "args": {"hidden": 16}}
    teacher = run_experiment(
        parse_config(synthetic_cfg(tmp_path / "gt", data=graph_data, student=gnn, train=train))
    )
    cfg = synthetic_cfg(
        tmp_path / "glnn",
        data=graph_data,
        student={"name": "node_mlp", "args": {"hidden": 8}},
        train=train,
    )
    cfg["scheme"] = "offline"
    cfg["teacher"] = {**gnn, "weights": teacher["run_dir"]}
    cfg["objective"] = {
        "terms": [{"loss": "kd"}, {"loss": "lsp", "student": "embed", "teacher": "embed"}]
    }
    assert run_experiment(parse_config(cfg))["complete"]

    life = synthetic_cfg(tmp_path / "life", train=train)
    life["scheme"] = {"name": "lifelong", "args": {"tasks": [[0], [1, 2]], "ewc_weight": 10.0}}
    result = run_experiment(parse_config(life))
    assert result["complete"] and len(result["lifelong"]["acc_class_il"]) == 2

    members = []
    for s in range(2):
        r = run_experiment(
            parse_config(synthetic_cfg(tmp_path / f"m{s}", train={**train, "seed": s}))
        )
        members.append({"name": "mlp", "args": {"hidden": [16]}, "weights": r["run_dir"]})
    ens = synthetic_cfg(tmp_path / "ens", train=train)
    ens["scheme"] = {"name": "ensemble_kd", "args": {"target": "dirichlet"}}
    ens["teachers"] = members
    result = run_experiment(parse_config(ens))
    assert result["complete"] and "test_knowledge_uncertainty_rank_corr" in result


def test_federated_round_on_cuda(tmp_path):
    """Clients and server train on the GPU; predictions and tests run on the CPU after."""
    import yaml

    from distill.paradigms.federated import load_federated_config, run_federated

    local = {"epochs": 1, "batch_size": 32, "device": "cuda"}
    raw = {
        "run_dir": str(tmp_path / "fed"),
        "data": synthetic_cfg(tmp_path)["data"],
        "client": {"name": "mlp", "args": {"hidden": [8]}},
        "clients": 2,
        "rounds": 1,
        "local": local,
        "digest": local,
        "revisit": local,
        "server_train": local,
    }
    (tmp_path / "fed.yaml").write_text(yaml.safe_dump(raw))
    result = run_federated(load_federated_config(tmp_path / "fed.yaml"), progress=False)
    assert 0 <= result["history"][-1]["server_test_acc"] <= 1


@pytest.mark.parametrize("task", ["detection", "segmentation"])
def test_dense_scheme_on_cuda(tmp_path, task):
    """Detector/segnet training, dense KD terms (with a memory bank) and mAP/mIoU on the GPU."""
    small = {"num_train": 48, "num_val": 16, "num_test": 16}
    if task == "detection":
        big = {"name": "detector", "args": {"widths": [8, 16, 16], "fpn": 16}}
        small_model = {"name": "detector", "args": {"widths": [4, 8, 8], "fpn": 8}}
        terms = [
            {"loss": "det_cls_kd"},
            {"loss": "det_box_kd", "args": {"threshold": 0.0}},
            {
                "loss": "adaptive_levels",
                "student": ["fpn.0", "fpn.1"],
                "teacher": ["fpn.0", "fpn.1"],
            },
        ]
    else:
        big = {"name": "segnet", "args": {"widths": [8, 16]}}
        small_model = {"name": "segnet", "args": {"widths": [4, 8]}}
        terms = [{"loss": "pixel_kd"}, {"loss": "cirkd", "student": "dec", "teacher": "dec"}]
    monitor = "map" if task == "detection" else "miou"

    def cfg(run_dir, model, **kw):
        return {
            "run_dir": str(run_dir),
            "scheme": {"name": "dense", "args": {"task": task}},
            "data": {"name": "scenes", "options": {"task": task, **small}},
            "student": model,
            "train": {
                "epochs": 1,
                "batch_size": 16,
                "monitor": monitor,
                "progress": False,
                "device": "cuda",
                "precision": "bf16",
            },
            **kw,
        }

    teacher = run_experiment(parse_config(cfg(tmp_path / "t", big)))
    student = cfg(
        tmp_path / "s",
        small_model,
        teacher={**big, "weights": teacher["run_dir"]},
        objective={"terms": terms},
    )
    result = run_experiment(parse_config(student))
    assert result["complete"] and 0 <= result[f"test_{monitor}"] <= 1
