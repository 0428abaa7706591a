"""Contrastive losses: InfoNCE, CRD (memory bank + NCE) and SEED against their formulas."""

import math

import pytest
import torch
import torch.nn.functional as F

from distill.losses import CRDLoss, InfoNCELoss, SEEDLoss


def test_infonce_golden():
    torch.manual_seed(0)
    loss_fn = InfoNCELoss((3, 5), (3, 4), dim=6, temperature=0.5)
    s, t = torch.randn(3, 5), torch.randn(3, 4)
    z_s = F.normalize(loss_fn.embed_s.proj(s), dim=1).tolist()
    z_t = F.normalize(loss_fn.embed_t.proj(t), dim=1).tolist()
    expected = 0.0
    for i in range(3):
        logits = [sum(a * b for a, b in zip(z_s[i], z_t[j])) / 0.5 for j in range(3)]
        expected += -logits[i] + math.log(sum(math.exp(v) for v in logits))
    assert loss_fn(s, t).item() == pytest.approx(expected / 3, rel=1e-5)


def test_infonce_rewards_matching_embeddings():
    torch.manual_seed(0)
    loss_fn = InfoNCELoss((8, 4), (8, 4), dim=4, temperature=0.05)
    loss_fn.embed_t.proj.load_state_dict(loss_fn.embed_s.proj.state_dict())
    x = torch.randn(8, 4)
    assert loss_fn(x, x).item() < loss_fn(x, torch.randn(8, 4)).item()


def _crd(**kw):
    torch.manual_seed(0)
    return CRDLoss((4, 3), (4, 5), num_samples=10, dim=4, num_negatives=3, temperature=0.5, **kw)


def test_crd_nce_golden_with_fixed_negatives(monkeypatch):
    crd = _crd()
    s, t, index = torch.randn(2, 3), torch.randn(2, 5), torch.tensor([1, 7])
    negatives = torch.tensor([[0, 2, 3], [4, 5, 6]])
    monkeypatch.setattr(torch, "randint", lambda *a, **k: negatives.clone())
    crd.z_s.fill_(2.0)
    crd.z_t.fill_(3.0)
    z_s = F.normalize(crd.embed_s.proj(s), dim=1)
    z_t = F.normalize(crd.embed_t.proj(t), dim=1)
    noise = 3 / 10

    def nce(anchor, bank, z):
        total = 0.0
        for n in range(2):
            rows = [index[n].item(), *negatives[n].tolist()]
            p = [math.exp(float((bank[r] @ anchor[n]).detach()) / 0.5) / z for r in rows]
            total += -math.log(p[0] / (p[0] + noise + 1e-7)) - sum(
                math.log(noise / (q + noise + 1e-7)) for q in p[1:]
            )
        return total / 2

    expected = nce(z_s, crd.bank_t, 3.0) + nce(z_t, crd.bank_s, 2.0)
    assert crd(s, t, index=index).item() == pytest.approx(expected, rel=1e-5)


def test_crd_memory_and_normaliser():
    crd = _crd(momentum=0.5)
    s, t, index = torch.randn(4, 3), torch.randn(4, 5), torch.tensor([0, 3, 5, 9])
    crd.eval()
    before = crd.bank_s.clone()
    crd(s, t, index=index)
    assert crd.z_s.item() < 0 and torch.equal(crd.bank_s, before)  # eval: nothing stored
    crd.train()
    z_s = F.normalize(crd.embed_s.proj(s), dim=1).detach()
    crd(s, t, index=index)
    assert crd.z_s.item() > 0 and crd.z_t.item() > 0  # fixed on the first training call
    assert torch.allclose(
        crd.bank_s[index], F.normalize(before[index] * 0.5 + z_s * 0.5, dim=1), atol=1e-6
    )
    untouched = torch.tensor([1, 2, 4, 6, 7, 8])
    assert torch.equal(crd.bank_s[untouched], before[untouched])
    assert {"bank_s", "bank_t", "z_s", "z_t"} <= set(crd.state_dict())  # checkpointed


def test_crd_negatives_avoid_the_anchor():
    crd = CRDLoss((2, 3), (2, 3), num_samples=3, num_negatives=100)
    assert crd.num_negatives == 2
    torch.manual_seed(1)
    s = torch.randn(2, 3, requires_grad=True)
    crd(s, torch.randn(2, 3), index=torch.tensor([0, 2])).backward()
    assert s.grad is not None and torch.isfinite(s.grad).all()


def test_seed_golden_and_queue():
    torch.manual_seed(0)
    seed = SEEDLoss((3, 4), (3, 5), queue_size=4, student_temperature=0.5, teacher_temperature=0.25)
    s, t = torch.randn(3, 4), torch.randn(3, 5)
    q = seed.queue.clone()
    z_t = F.normalize(t, dim=1)
    z_s = F.normalize(seed.proj(s), dim=1).detach()
    expected = 0.0
    for i in range(3):
        lt = [float(z_t[i] @ q[k]) / 0.25 for k in range(4)] + [1.0 / 0.25]
        ls = [float(z_s[i] @ q[k]) / 0.5 for k in range(4)] + [float(z_s[i] @ z_t[i]) / 0.5]
        pt = [math.exp(v) / sum(math.exp(u) for u in lt) for v in lt]
        log_ps = [v - math.log(sum(math.exp(u) for u in ls)) for v in ls]
        expected += -sum(a * b for a, b in zip(pt, log_ps))
    assert seed(s, t).item() == pytest.approx(expected / 3, rel=1e-5)
    assert torch.allclose(seed.queue[:3], z_t, atol=1e-6) and seed.ptr.item() == 3  # FIFO
    seed(s[:2], t[:2])
    assert seed.ptr.item() == 1 and torch.allclose(seed.queue[3], z_t[0], atol=1e-6)  # wrapped


def test_sinkhorn_plan_has_uniform_marginals_and_matches_plain_iterations():
    from distill.losses.contrastive import sinkhorn_plan

    torch.manual_seed(0)
    cost = torch.rand(4, 3)
    plan = sinkhorn_plan(cost, eps=0.5, iters=200)
    assert torch.allclose(plan.sum(1), torch.full((4,), 0.25), atol=1e-5)
    assert torch.allclose(plan.sum(0), torch.full((3,), 1 / 3), atol=1e-5)
    k = [[math.exp(-c / 0.5) for c in row] for row in cost.tolist()]  # textbook u/v scaling
    u, v = [1.0] * 4, [1.0] * 3
    for _ in range(200):
        u = [0.25 / sum(k[i][j] * v[j] for j in range(3)) for i in range(4)]
        v = [(1 / 3) / sum(k[i][j] * u[i] for i in range(4)) for j in range(3)]
    expected = torch.tensor([[u[i] * k[i][j] * v[j] for j in range(3)] for i in range(4)])
    assert torch.allclose(plan, expected, atol=1e-6)


def test_wcord_parts():
    from distill.losses import WCoRDLoss
    from distill.losses.contrastive import sinkhorn_plan

    torch.manual_seed(0)
    s, t = torch.randn(5, 6), torch.randn(5, 3)
    w = WCoRDLoss((5, 6), (5, 3), dim=4, temperature=0.5, gp_weight=0.0, local_weight=0.0)
    scores = w.critic(s, t)
    off = ~torch.eye(5, dtype=torch.bool)
    assert w(s, t).item() == pytest.approx(
        -(scores.diagonal().mean() - scores[off].mean()).item(), rel=1e-5
    )
    w.local_weight = 2.0
    cost = 1 - scores * 0.5
    local = (sinkhorn_plan(cost, 0.05, 50) * cost).sum()
    assert w(s, t).item() == pytest.approx(
        (-(scores.diagonal().mean() - scores[off].mean()) + 2 * local).item(), rel=1e-5
    )
    # The gradient penalty: (||d g(t_i, s_i) / d(s_i, t_i)|| - 1)^2, averaged over the batch.
    w.local_weight, w.gp_weight = 0.0, 1.0
    jac_s = torch.autograd.functional.jacobian(lambda x: w.critic(x, t).diagonal().sum(), s)
    jac_t = torch.autograd.functional.jacobian(lambda x: w.critic(s, x).diagonal().sum(), t)
    penalty = ((torch.cat([jac_s, jac_t], 1).norm(dim=1) - 1) ** 2).mean()
    w0 = -(scores.diagonal().mean() - scores[off].mean())
    assert w(s, t).item() == pytest.approx((w0 + penalty).item(), rel=1e-4)
