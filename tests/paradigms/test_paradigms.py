"""Graph, lifelong, ensemble-compression, federated, dataset and interpretable distillation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import REPO, stand_in_weights, synthetic_cfg

from distill.app.build import build, load_data
from distill.app.run import run_experiment
from distill.app.validate import validate
from distill.core.config import load_config, parse_config
from distill.core.errors import ConfigError
from distill.losses import lsp_loss
from distill.metrics import spearman
from distill.paradigms import condense, ensemble, federated, graph, interpret, lifelong
from distill.schemes.base import SchemeContext, soft_kl
from distill.taps import Tap

ROOT = REPO
EXAMPLES = ROOT / "examples" / "paradigms"
RUN_EXAMPLES = sorted(
    p for p in EXAMPLES.glob("*.yaml") if p.stem not in ("interpret", "federated")
)


# ----------------------------------------------------------------------------- graph
def test_knn_graph_and_tree_layout():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 5)).astype(np.float32)
    nbrs = graph.knn_graph(x, 3, "euclidean")
    d = ((x[:, None] - x[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    assert (nbrs == np.argsort(d, 1)[:, :3]).all()  # nearest first, never itself
    trees = graph.ego_trees(x, nbrs)
    assert trees.shape == (40, 1 + 3 + 9, 5)
    i = 7
    assert np.array_equal(trees[i, 0], x[i])
    assert np.array_equal(trees[i, 1:4], x[nbrs[i]])
    for j in range(3):  # block j holds the neighbours of neighbour j
        assert np.array_equal(trees[i, 4 + 3 * j : 7 + 3 * j], x[nbrs[nbrs[i, j]]])
    assert graph.fanout(13) == 3
    with pytest.raises(ConfigError, match="1 \\+ k \\+ k\\^2"):
        graph.fanout(12)


@pytest.mark.parametrize("kind", ["sage", "gcn"])
def test_gnn_on_trees_equals_dense_message_passing(kind):
    """The tree layout reproduces full-graph message passing with a row-mean adjacency."""
    rng = np.random.default_rng(1)
    n, k, d = 30, 3, 6
    x = rng.normal(size=(n, d)).astype(np.float32)
    nbrs = graph.knn_graph(x, k)
    model = graph.GNN((1 + k + k * k, d), 4, hidden=8, kind=kind).eval()
    a = torch.zeros(n, n)
    a[torch.arange(n).repeat_interleave(k), torch.as_tensor(nbrs).flatten()] = 1.0 / k
    h = torch.as_tensor(x)

    def layer(conv, h):
        agg = a @ h
        if kind == "gcn":
            return conv.self_proj((h + k * agg) / (k + 1))
        return conv.self_proj(h) + conv.nbr_proj(agg)

    with torch.no_grad():
        h1 = torch.relu(layer(model.conv1, h))
        expected = model.head(torch.relu(layer(model.conv2, h1)))
        got = model(torch.as_tensor(graph.ego_trees(x, nbrs)))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_mlp_student_needs_no_graph_at_inference():
    model = graph.NodeMLP((13, 6), 4, hidden=8).eval()
    trees = torch.randn(5, 13, 6)
    with torch.no_grad():
        on_trees = model(trees)
        alone = model(trees[:, 0])  # node features only: no graph at all
        scrambled = trees.clone()
        scrambled[:, 1:] = torch.randn(5, 12, 6)
        torch.testing.assert_close(on_trees, alone, atol=1e-6, rtol=1e-6)
        assert torch.equal(model(scrambled), on_trees)  # neighbours change nothing
    with Tap(model, ["embed"], "student") as tap:
        assert tap.run(trees).feats["embed"].shape == (5, 1 + 3, 8)  # rows for LSP


def test_lsp_loss_formula():
    torch.manual_seed(0)
    s, t = torch.randn(4, 5, 3, requires_grad=True), torch.randn(4, 5, 7, requires_grad=True)

    def ls(z):  # softmax over neighbours of -||z_i - z_j||^2 / 2
        return F.softmax(-((z[:, :1] - z[:, 1:]) ** 2).sum(-1) / 2, -1)

    p_s, p_t = ls(s), ls(t)
    expected = (p_s * (p_s.log() - p_t.log())).sum(-1).mean()
    got = lsp_loss(s, t)
    torch.testing.assert_close(got, expected)
    got.backward()
    assert t.grad is None and s.grad.abs().sum() > 0  # the teacher is a constant
    assert float(lsp_loss(t.detach(), t.detach())) == pytest.approx(0.0, abs=1e-7)
    rbf = lsp_loss(s, t, kernel="rbf", sigma=2.0)
    k_s = torch.exp(-((s[:, :1] - s[:, 1:]) ** 2).sum(-1) / 8)
    k_t = torch.exp(-((t[:, :1] - t[:, 1:]) ** 2).sum(-1) / 8)
    q_s, q_t = F.softmax(k_s, -1), F.softmax(k_t, -1)
    torch.testing.assert_close(rbf, (q_s * (q_s.log() - q_t.log())).sum(-1).mean())
    with pytest.raises(ValueError, match="neighbours"):
        lsp_loss(torch.randn(4, 3), torch.randn(4, 3))


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
@pytest.mark.parametrize("kernel", ["distance", "rbf", "linear"])
def test_lsp_is_finite_at_any_scale(scale, kernel):
    g = torch.Generator().manual_seed(0)
    s = (torch.randn(3, 5, 4, generator=g) * scale).bfloat16().requires_grad_()
    t = (torch.randn(3, 5, 2, generator=g) * scale).bfloat16()
    loss = lsp_loss(s, t, kernel=kernel)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad.float()).all()


def test_graph_dataset_is_transductive_and_keeps_labels():
    data = load_data(parse_config(_graph_cfg(Path("unused"))).data)
    assert data.input_shape == (1 + 4 + 16, 8)
    assert len(data.test) == 80 and data.num_classes == 3
    # the test split's nodes are in the graph: their own features are row 0
    raw = load_data(parse_config(synthetic_cfg(Path("unused"))).data)
    assert torch.equal(data.test.inputs[:, 0], raw.test.inputs)


def _graph_cfg(run_dir: Path, **kw) -> dict:
    cfg = synthetic_cfg(
        run_dir,
        data={
            "name": "graph",
            "options": {
                "base": "synthetic",
                "k": 4,
                "num_samples": 400,
                "num_features": 8,
                "num_classes": 3,
            },
        },
        student={"name": "gnn", "args": {"hidden": 16}},
    )
    cfg.update(kw)
    return cfg


def test_glnn_student_distils_from_a_gnn_end_to_end(tmp_path):
    teacher = run_experiment(parse_config(_graph_cfg(tmp_path / "teacher")))
    assert teacher["complete"]
    cfg = _graph_cfg(
        tmp_path / "glnn",
        scheme="offline",
        student={"name": "node_mlp", "args": {"hidden": 16}},
        teacher={"name": "gnn", "args": {"hidden": 16}, "weights": str(tmp_path / "teacher")},
        objective={
            "task_weight": 0.5,
            "terms": [
                {"loss": "kd", "args": {"temperature": 2.0}},
                {"loss": "lsp", "student": "embed", "teacher": "embed"},
                {"loss": "graph", "student": "hidden", "teacher": "hidden"},
            ],
        },
    )
    result = run_experiment(parse_config(cfg))
    assert result["complete"] and result["test_acc"] > 0.7  # chance 1/3; measured 0.81
    assert 0 <= result["test_agreement"] <= 1


# -------------------------------------------------------------------------- lifelong
def _lifelong_cfg(run_dir: Path, **args) -> dict:
    cfg = synthetic_cfg(run_dir, train={"epochs": 2})
    cfg["scheme"] = {"name": "lifelong", "args": {"tasks": [[0], [1, 2]], **args}}
    return cfg


def test_task_classes_keep_labels_and_every_output():
    cfg = synthetic_cfg(Path("unused"), data={"task_classes": [1, 2]})
    data = load_data(parse_config(cfg).data)
    assert set(data.train.targets.tolist()) == {1, 2} and data.num_classes == 3
    with pytest.raises(ConfigError, match="task_classes"):
        load_data(parse_config(synthetic_cfg(Path("u"), data={"task_classes": [7]})).data)


def test_lifelong_stages_are_wired_task_by_task(tmp_path):
    from distill.app.stages import expand

    cfg = parse_config(_lifelong_cfg(tmp_path, ewc_weight=5.0))
    stages = expand(cfg)
    assert [s.data.task_classes for s in stages] == [[0], [1, 2]]
    assert stages[0].teacher is None and stages[0].scheme.args["old_classes"] == []
    second = stages[1]
    assert second.scheme.name == "lwf" and second.scheme.args["old_classes"] == [0]
    assert second.teacher.weights == second.student.weights == str(stages[0].resolved_run_dir())
    assert second.scheme.args["anchors"] == [str(stages[0].resolved_run_dir())]
    joint = expand(parse_config(_lifelong_cfg(tmp_path, joint=True)))
    assert len(joint) == 1 and joint[0].data.task_classes == [0, 1, 2]
    with pytest.raises(ConfigError, match="no class may appear in two tasks"):
        expand(parse_config(_lifelong_cfg(tmp_path, tasks=[[0, 1], [1, 2]])))


def test_lwf_snapshot_is_frozen_and_losses_follow_their_formulas(tmp_path):
    cfg = _lifelong_cfg(tmp_path)
    data = load_data(parse_config(cfg).data)
    torch.manual_seed(0)
    student = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    teacher = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    built = build(parse_config(synthetic_cfg(tmp_path)))
    ctx = SchemeContext(
        student=student,
        objective=built.objective,
        data=data,
        teacher=teacher,
        args={"old_classes": [0], "new_classes": [1, 2], "temperature": 2.0},
    )
    scheme = lifelong.LwF(ctx)
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training
    x = torch.randn(6, 16)
    batch = {"input": x, "target": torch.tensor([1, 2, 1, 2, 1, 2])}
    out = scheme.step(batch, 0)
    z = student(x)
    torch.testing.assert_close(out["ce"], F.cross_entropy(z, batch["target"]))  # all seen
    q = F.softmax(teacher(x)[:, [0]] / 2.0, -1)
    torch.testing.assert_close(out["lwf"], soft_kl(z[:, [0]], q, 2.0))
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    out["loss"].backward()
    opt.step()
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    # classes of later tasks are masked out of the cross-entropy: no gradient reaches them
    ctx.args = {"old_classes": [], "new_classes": [1, 2], "lwf_weight": 0.0}
    first = lifelong.LwF(ctx)
    student.zero_grad()
    first.step(batch, 0)["loss"].backward()
    assert student[2].weight.grad[0].abs().sum() == 0
    assert student[2].weight.grad[1:].abs().sum() > 0


def test_ewc_importance_is_the_diagonal_fisher():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    x = torch.randn(7, 4)
    classes = [0, 2]
    got = lifelong.diagonal_fisher(model, x, classes, chunk=3)
    expected = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for row in x:
        log_p = F.log_softmax(model(row[None])[0, classes], -1)
        for y in range(len(classes)):
            model.zero_grad()
            grads = torch.autograd.grad(log_p[y], list(model.parameters()), retain_graph=True)
            for (n, _), g in zip(model.named_parameters(), grads):
                expected[n] += log_p[y].exp().detach() * g.pow(2)
    for n in expected:
        torch.testing.assert_close(got[n], expected[n] / len(x), atol=1e-6, rtol=1e-5)
    anchor = {n: (got[n], p.detach().clone()) for n, p in model.named_parameters()}
    assert float(lifelong.ewc_penalty(model, [anchor]).detach()) == 0.0
    with torch.no_grad():
        model[0].weight += 0.5
    penalty = float(lifelong.ewc_penalty(model, [anchor]).detach())
    assert penalty == pytest.approx(float(got["0.weight"].sum() * 0.25), rel=1e-5)


def test_lifelong_run_writes_fisher_and_task_matrix(tmp_path):
    result = run_experiment(parse_config(_lifelong_cfg(tmp_path / "run", ewc_weight=10.0)))
    assert result["complete"]
    first = Path(result["run_dir"]) / "stages" / "00-task0"
    assert (first / lifelong.FISHER_FILE).is_file()
    matrix = result["lifelong"]["acc_class_il"]
    assert len(matrix) == 2 and all(len(r) == 2 for r in matrix)
    assert all(0 <= a <= 1 for row in matrix for a in row)
    assert result["lifelong"]["acc_task_il"][0][0] == 1.0  # one class: task-IL is trivial
    assert "forgetting_class_il" in result["lifelong"]
    assert json.loads((Path(result["run_dir"]) / "results.json").read_text())["lifelong"]


def test_forgetting_metric():
    m = [[0.9, 0.0, 0.0], [0.5, 0.8, 0.0], [0.4, 0.6, 0.7]]
    out = lifelong.summary_metrics(m, "x", joint=False)
    assert out["avg_acc_x"] == pytest.approx((0.4 + 0.6 + 0.7) / 3)
    assert out["forgetting_x"] == pytest.approx(((0.9 - 0.4) + (0.8 - 0.6)) / 2)


# -------------------------------------------------------------------------- ensemble
def test_munge_follows_bucila():
    g = torch.Generator().manual_seed(0)
    x, nbr = torch.zeros(2000, 10), torch.ones(2000, 10)
    assert torch.equal(ensemble.munge(x, nbr, p=0.0, s=1.0, generator=g), x)
    near = ensemble.munge(x, nbr, p=1.0, s=1e6, generator=g)
    torch.testing.assert_close(near, nbr, atol=1e-4, rtol=0)  # sd |x - x'| / s -> 0
    half = ensemble.munge(x, nbr, p=0.3, s=1.0, generator=g)
    changed = (half != 0).float().mean()
    assert abs(float(changed) - 0.3) < 0.02
    drawn = half[half != 0]
    assert abs(float(drawn.mean()) - 1.0) < 0.05 and abs(float(drawn.std()) - 1.0) < 0.05
    pts = torch.randn(50, 3)
    nn_idx = ensemble.nearest_neighbours(pts, chunk=7)
    d = torch.cdist(pts, pts)
    d.fill_diagonal_(float("inf"))
    assert torch.equal(nn_idx, d.argmin(1))


def test_dirichlet_nll_and_uncertainties():
    torch.manual_seed(0)
    z = torch.randn(4, 3)
    probs = F.softmax(torch.randn(5, 4, 3), -1)
    dist = torch.distributions.Dirichlet(z.exp())
    expected = -dist.log_prob(probs).mean()
    torch.testing.assert_close(ensemble.dirichlet_nll(z, probs, smoothing=0.0), expected)
    # expected entropy under the Dirichlet, against Monte Carlo
    u = ensemble.dirichlet_uncertainty(z)
    samples = dist.sample((20000,))
    mc = ensemble.entropy(samples).mean(0)
    torch.testing.assert_close(u["data"], mc, atol=0.02, rtol=0)
    same = F.softmax(torch.randn(1, 4, 3), -1).expand(5, 4, 3)
    assert ensemble.ensemble_uncertainty(same)["knowledge"].abs().max() < 1e-6
    a = torch.randn(100)
    assert spearman(a, 2 * a + 1) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)


@pytest.mark.parametrize("target", ["mean", "dirichlet"])
def test_ensemble_compression_end_to_end(tmp_path, target):
    teachers = []
    for s in range(2):
        r = run_experiment(
            parse_config(synthetic_cfg(tmp_path / f"m{s}", train={"epochs": 2, "seed": s}))
        )
        teachers.append({"name": "mlp", "args": {"hidden": [16]}, "weights": r["run_dir"]})
    cfg = synthetic_cfg(tmp_path / "student", student={"name": "mlp", "args": {"hidden": [8]}})
    cfg["scheme"] = {"name": "ensemble_kd", "args": {"target": target, "anneal_from": 3.0}}
    cfg["teachers"] = teachers
    result = run_experiment(parse_config(cfg))
    assert result["complete"]
    for key in ("test_ece", "ensemble_test_acc", "ensemble_test_ece", "member_test_acc_mean"):
        assert 0 <= result[key] <= 1
    assert ("test_knowledge_uncertainty_rank_corr" in result) == (target == "dirichlet")


def test_ensemble_kd_needs_an_ensemble(tmp_path):
    from helpers import make_teacher

    t = make_teacher(tmp_path / "t.safetensors", {"hidden": [16]})
    cfg = synthetic_cfg(
        tmp_path,
        scheme="ensemble_kd",
        teachers=[{"name": "mlp", "args": {"hidden": [16]}, "weights": str(t)}],
    )
    with pytest.raises(ConfigError, match="two or more"):
        build(parse_config(cfg))


# ------------------------------------------------------------------------- federated
def test_dirichlet_split_partitions_every_row():
    labels = np.repeat(np.arange(4), 50)
    parts = federated.dirichlet_split(labels, 5, 0.3, seed=0, min_size=5)
    joined = np.concatenate(parts)
    assert len(joined) == 200 and len(np.unique(joined)) == 200
    assert min(len(p) for p in parts) >= 5
    with pytest.raises(ConfigError, match="fewer clients"):
        federated.dirichlet_split(labels, 50, 0.01, seed=0, min_size=10)


def test_federated_clients_send_only_logits_on_public_data(tmp_path):
    data = synthetic_cfg(tmp_path)["data"]
    raw = {
        "name": "fed",
        "run_dir": str(tmp_path / "fed"),
        "data": data,
        "client": {"name": "mlp", "args": {"hidden": [8]}},
        "clients": 3,
        "alpha": 1.0,
        "rounds": 2,
        "local": {"epochs": 2, "batch_size": 32},
        "digest": {"epochs": 1, "batch_size": 32},
        "revisit": {"epochs": 1, "batch_size": 32},
        "server_train": {"epochs": 2, "batch_size": 32},
    }
    path = tmp_path / "fed.yaml"
    import yaml

    path.write_text(yaml.safe_dump(raw))
    cfg = federated.load_federated_config(path)
    result = federated.run_federated(cfg, progress=False)
    n_public = result["public_samples"]
    log = result["channel"].log
    assert len(log) == 2 * (3 + 3)  # each round: 3 uploads and 3 consensus downloads
    assert {tuple(m.shape) for _, _, m in log} == {(n_public, 3)}
    uploads = [m for s, r, m in log if r == "server"]
    downloads = [m for s, r, m in log if s == "server"]
    assert all(torch.allclose(m.sum(-1), torch.ones(n_public)) for m in downloads)
    # an upload is the sender's logits on the public inputs, nothing else
    assert not any(torch.allclose(F.softmax(m, -1).sum(-1), m.sum(-1)) for m in uploads)
    hist = result["history"]
    assert len(hist) == 3 and hist[0]["server_test_acc"] is None
    assert 0 <= hist[-1]["server_test_acc"] <= 1 and 0 <= result["centralised_test_acc"] <= 1
    assert sum(result["private_sizes"]) + n_public == len(load_data(cfg.data).train)
    assert "| round |" in federated.markdown("fed", result)
    with pytest.raises(ConfigError, match="already holds"):
        federated.run_federated(cfg, progress=False)


# ------------------------------------------------------------------------- condense
def test_distribution_matching_moves_class_means_together():
    torch.manual_seed(0)
    x = torch.cat([torch.randn(60, 1, 6, 6) + 1.0, torch.randn(60, 1, 6, 6) - 1.0])
    y = torch.cat([torch.zeros(60), torch.ones(60)]).long()
    settings = condense.CondenseSettings(per_class=2, iterations=60, lr=0.5, batch_real=60)
    init_x, init_y = condense.random_subset(x, y, 2, settings.seed)
    syn_x, syn_y = condense.distribution_matching(x, y, settings, 2)
    assert torch.equal(syn_y, init_y) and syn_x.shape == (4, 1, 6, 6)

    def gap(s):  # the DM objective under fresh random networks
        from distill.models import build_model

        total = 0.0
        for seed in range(20):
            torch.manual_seed(10_000 + seed)
            net = build_model("convnet", (1, 6, 6), 2, {"channels": [8], "stride": 1}).eval()
            with torch.no_grad():
                e_r, e_s = net.blocks(x).flatten(1), net.blocks(s).flatten(1)
            for c in (0, 1):
                total += float((e_r[y == c].mean(0) - e_s[syn_y == c].mean(0)).pow(2).sum())
        return total

    assert gap(syn_x) < 0.5 * gap(init_x)


def test_condensed_training_split_is_cached(tmp_path, monkeypatch):
    cfg = synthetic_cfg(
        tmp_path,
        data={"condense": {"per_class": 3, "iterations": 5, "method": "dm"}},
    )
    first = load_data(parse_config(cfg).data)
    assert (
        len(first.train) == 9
        and sorted(first.train.targets.tolist()) == [0] * 3 + [1] * 3 + [2] * 3
    )
    assert len(first.val) > 9  # validation and test stay real
    called = []
    monkeypatch.setattr(condense, "distribution_matching", lambda *a, **k: called.append(1))
    again = load_data(parse_config(cfg).data)
    assert not called and torch.equal(again.train.inputs, first.train.inputs)
    random = load_data(
        parse_config(
            synthetic_cfg(tmp_path, data={"condense": {"per_class": 3, "method": "random"}})
        ).data
    )
    full = load_data(parse_config(synthetic_cfg(tmp_path)).data)
    rows = (random.train.inputs[:, None] == full.train.inputs[None]).all(-1).any(1)
    assert rows.all()  # real samples
    with pytest.raises(ConfigError, match="lower per_class"):
        load_data(
            parse_config(synthetic_cfg(tmp_path, data={"condense": {"per_class": 10_000}})).data
        )


# ----------------------------------------------------------------------- interpret
def test_tree_rules_and_feature_names():
    from sklearn.tree import DecisionTreeRegressor

    assert interpret.feature_names((1, 2, 2)) == ["x[0,0]", "x[0,1]", "x[1,0]", "x[1,1]"]
    x = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]] * 5)
    p = np.eye(2)[(x[:, 0] > 0.5).astype(int)]
    tree = DecisionTreeRegressor(max_depth=2).fit(x, p)
    text = interpret.tree_rules(tree, ["a", "b"])
    assert text.startswith("if a <= 0.500:")
    assert text.count("->") == tree.get_n_leaves() == 2
    assert "class 0 (p=1.00, n=10)" in text and "class 1 (p=1.00, n=10)" in text


def test_interpret_end_to_end(tmp_path):
    teacher = run_experiment(parse_config(synthetic_cfg(tmp_path / "teacher")))
    raw = {
        "name": "interp",
        "run_dir": str(tmp_path / "interp"),
        "data": synthetic_cfg(tmp_path)["data"],
        "teacher": {"name": "mlp", "args": {"hidden": [16]}, "weights": teacher["run_dir"]},
        "transfer": {"multiplier": 2},
        "tree": {"max_depth": 3},
    }
    import yaml

    path = tmp_path / "interp.yaml"
    path.write_text(yaml.safe_dump(raw))
    result = interpret.run_interpret(interpret.load_interpret_config(path), progress=False)
    rows = {r["model"]: r for r in result["rows"]}
    assert set(rows) == {
        "teacher",
        "tree_soft",
        "tree_teacher_labels",
        "tree_hard",
        "linear_soft",
        "linear_hard",
    }
    assert all(0 <= r["fidelity"] <= 1 for r in rows.values())
    assert result["transfer_samples"] == 3 * len(
        load_data(parse_config(synthetic_cfg(tmp_path)).data).train
    )
    assert (tmp_path / "interp" / "rules.txt").read_text().startswith("if ")
    path.write_text(yaml.safe_dump({**raw, "teacher": {"name": "mlp"}}))
    with pytest.raises(ConfigError, match="trained teacher"):
        interpret.load_interpret_config(path)


# ------------------------------------------------------------------------- examples
@pytest.mark.parametrize("path", RUN_EXAMPLES, ids=[p.stem for p in RUN_EXAMPLES])
def test_paradigm_example_validates_and_trains(path, tmp_path):
    overrides = [f"run_dir={tmp_path / 'run'}", "train.progress=false"]
    if load_config(path).data.condense is not None:
        overrides += ["data.condense.iterations=2"]
    cfg = load_config(path, overrides)
    overrides += stand_in_weights(cfg, tmp_path)
    if cfg.scheme.name == "lifelong":
        cfg = load_config(path, [*overrides, "train.epochs=1", "scheme.args.ewc_weight=1.0"])
        assert validate(cfg) == []
        assert run_experiment(cfg)["complete"]
        return
    cfg = load_config(path, [*overrides, "train.max_steps=3"])
    assert validate(cfg) == []
    assert run_experiment(cfg)["steps"] == 3


@pytest.mark.parametrize("name", ["interpret", "federated"])
def test_command_examples_load(name):
    loader = (
        interpret.load_interpret_config if name == "interpret" else federated.load_federated_config
    )
    cfg = loader(EXAMPLES / f"{name}.yaml")
    assert cfg.data.name == "digits"
