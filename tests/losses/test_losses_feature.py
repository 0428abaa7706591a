"""Feature losses against their papers' formulas, computed independently here."""

import math

import pytest
import torch

from distill.losses import (
    FactorTransferLoss,
    VIDLoss,
    ab_loss,
    at_loss,
    attention_kl_loss,
    cosine_loss,
    nst_loss,
    pkt_loss,
)

torch.manual_seed(0)
FS = torch.randn(2, 3, 4)  # (N, C_s, L)
FT = torch.randn(2, 5, 4)  # (N, C_t, L): other channel count, same positions


def norm(v):
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def test_at_golden_and_channel_invariance():
    def q(f):
        return [
            norm([sum(f[n][c][p] ** 2 for c in range(len(f[n]))) / len(f[n]) for p in range(4)])
            for n in range(2)
        ]

    qs, qt = q(FS.tolist()), q(FT.tolist())
    expected = sum((a - b) ** 2 for rs, rt in zip(qs, qt) for a, b in zip(rs, rt)) / 8
    assert at_loss(FS, FT).item() == pytest.approx(expected, rel=1e-5)
    doubled = torch.cat([FS, FS], 1)  # same per-position channel mean -> same attention map
    assert at_loss(doubled, FT).item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="spatial size"):
        at_loss(FS, torch.randn(2, 5, 6))


def test_nst_golden_and_zero():
    def mmd(s, t):
        s = [norm(c) for c in s]
        t = [norm(c) for c in t]

        def k(a, b):
            return sum(x * y for x, y in zip(a, b)) ** 2

        def mean_k(a, b):
            return sum(k(x, y) for x in a for y in b) / (len(a) * len(b))

        return mean_k(t, t) + mean_k(s, s) - 2 * mean_k(s, t)

    expected = sum(mmd(s, t) for s, t in zip(FS.tolist(), FT.tolist())) / 2
    assert nst_loss(FS, FT).item() == pytest.approx(expected, rel=1e-4)
    assert nst_loss(FT, FT * 3.0).item() == pytest.approx(0.0, abs=1e-6)


def test_pkt_golden_and_zero():
    s, t = torch.randn(4, 3), torch.randn(4, 6)

    def cond(x):
        u = [norm(r) for r in x.tolist()]
        sim = [[(sum(a * b for a, b in zip(p, q)) + 1) / 2 for q in u] for p in u]
        return [[v / sum(row) for v in row] for row in sim]

    ps, pt = cond(s), cond(t)
    expected = (
        sum(b * math.log((b + 1e-7) / (a + 1e-7)) for rs, rt in zip(ps, pt) for a, b in zip(rs, rt))
        / 16
    )
    assert pkt_loss(s, t).item() == pytest.approx(expected, rel=1e-5)
    assert pkt_loss(t, 2 * t).item() == pytest.approx(0.0, abs=1e-6)


def test_ab_golden_and_margin():
    s = torch.tensor([[0.5, -2.0, 0.2, 3.0]])
    t = torch.tensor([[1.0, 1.0, -1.0, -0.5]])
    # t>0,s<1: (s-1)^2 for 0.5 -> 0.25 and -2 -> 9;  t<=0,s>-1: (s+1)^2 for 0.2 -> 1.44 and 3.0 -> 16
    assert ab_loss(s, t).item() == pytest.approx((0.25 + 9 + 1.44 + 16) / 4, rel=1e-6)
    beyond = torch.tensor([[1.5, 2.0, -1.2, -3.0]])
    assert ab_loss(beyond, t).item() == 0.0  # right side of the boundary by the margin: no loss
    with pytest.raises(ValueError, match="adapter"):
        ab_loss(torch.randn(2, 3), torch.randn(2, 4))


def test_cosine_golden_and_mask():
    s, t = torch.tensor([[[1.0, 0.0], [1.0, 1.0]]]), torch.tensor([[[0.0, 1.0], [2.0, 2.0]]])
    assert cosine_loss(s, t).item() == pytest.approx((1.0 + 0.0) / 2, abs=1e-6)
    assert cosine_loss(s, t, mask=torch.tensor([[False, True]])).item() == pytest.approx(
        0.0, abs=1e-6
    )


def test_attention_kl_golden():
    s = torch.softmax(torch.randn(1, 2, 3, 3), -1)
    t = torch.softmax(torch.randn(1, 2, 3, 3), -1)
    expected = (
        sum(
            sum(b * math.log(b / a) for a, b in zip(s[0, h, q].tolist(), t[0, h, q].tolist()))
            for h in range(2)
            for q in range(3)
        )
        / 6
    )
    assert attention_kl_loss(s, t).item() == pytest.approx(expected, rel=1e-5)
    assert attention_kl_loss(t, t.clone()).item() == pytest.approx(0.0, abs=1e-6)


def test_vid_is_the_gaussian_nll_and_trains_its_variance():
    vid = VIDLoss(FS.shape, FT.shape)
    s = FS.clone().requires_grad_()
    t = FT.clone().requires_grad_()
    loss = vid(s, t)
    mean = vid.regressor(FS)
    var = torch.nn.functional.softplus(vid.log_scale).reshape(1, -1, 1) + vid.eps
    expected = (0.5 * ((mean - FT) ** 2 / var + var.log())).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert var.mean().item() == pytest.approx(5.0, rel=1e-4)  # init_var
    loss.backward()
    assert s.grad is not None and t.grad is None and vid.log_scale.grad is not None
    opt = torch.optim.Adam(vid.parameters(), lr=0.05)
    first = vid(FS, FT).item()
    for _ in range(100):
        opt.zero_grad()
        vid(FS, FT).backward()
        opt.step()
    assert vid(FS, FT).item() < first - 0.5  # the regressor and variance fit


def test_ft_transfer_and_reconstruction_terms():
    ft = FactorTransferLoss(FS.shape, FT.shape, rate=0.4, recon_weight=0.0)
    s = FS.clone().requires_grad_()
    loss = ft(s, FT)
    f_t = torch.nn.functional.normalize(ft.encoder(FT).reshape(2, -1), dim=1)
    f_s = torch.nn.functional.normalize(ft.translator(FS).reshape(2, -1), dim=1)
    assert loss.item() == pytest.approx((f_s - f_t).abs().mean().item(), rel=1e-5)
    assert ft.encoder(FT).shape[1] == 2  # round(5 * 0.4) factor channels
    loss.backward()
    assert s.grad is not None and ft.translator[0].weight.grad is not None
    grad = ft.encoder[0].weight.grad  # the transfer term does not move the paraphraser
    assert grad is None or torch.all(grad == 0)
    with_recon = FactorTransferLoss(FS.shape, FT.shape, recon_weight=1.0)
    with_recon(FS, FT).backward()
    assert (
        with_recon.encoder[0].weight.grad is not None
        and with_recon.decoder[0].weight.grad is not None
    )


def test_alp_golden():
    from distill.losses import LayerAttentionLoss

    torch.manual_seed(0)
    s_layers = [torch.randn(2, 3, 4), torch.randn(2, 5)]
    t_layers = [torch.randn(2, 6, 4), torch.randn(2, 6, 2), torch.randn(2, 6)]
    alp = LayerAttentionLoss([x.shape for x in s_layers], [x.shape for x in t_layers])
    t = [[(x.mean(-1) if x.dim() > 2 else x)[n].tolist() for x in t_layers] for n in range(2)]
    total = 0.0
    for proj, feat in zip(alp.proj, s_layers):
        s = proj(feat.mean(-1) if feat.dim() > 2 else feat).tolist()
        per = 0.0
        for n in range(2):
            scores = [sum(a * b for a, b in zip(s[n], tj)) / math.sqrt(6) for tj in t[n]]
            w = [math.exp(v) / sum(math.exp(u) for u in scores) for v in scores]
            target = [sum(w[j] * t[n][j][d] for j in range(3)) for d in range(6)]
            per += sum((a - b) ** 2 for a, b in zip(s[n], target))
        total += per / 12
    assert alp(s_layers, t_layers).item() == pytest.approx(total / 2, rel=1e-5)
    with pytest.raises(ValueError, match="share one width"):
        LayerAttentionLoss([(2, 3)], [(2, 4), (2, 5)])


def test_ofa_golden_and_soft_ce_limit():
    from distill.losses import OFALoss

    torch.manual_seed(0)
    feats, t, y = torch.randn(2, 4, 3), torch.randn(2, 5), torch.tensor([1, -1])
    ofa = OFALoss(feats.shape, t.shape, eps=1.5)
    log_ps = torch.log_softmax(ofa.branch(feats.mean(-1)), -1).tolist()
    p_t = torch.softmax(t, -1).tolist()
    labels = [1, int(t[1].argmax())]
    expected = 0.0
    for n in range(2):
        for c in range(5):
            w = (p_t[n][c] + 1) ** 1.5 - 1 if c == labels[n] else p_t[n][c] ** 1.5
            expected -= w * log_ps[n][c]
    assert ofa(feats, t, targets=y).item() == pytest.approx(expected / 2, rel=1e-5)
    ce = OFALoss(feats.shape, t.shape, eps=1.0)
    soft = -(torch.softmax(t, -1) * torch.log_softmax(ce.branch(feats.mean(-1)), -1)).sum(-1).mean()
    assert ce(feats, t, targets=y).item() == pytest.approx(soft.item(), rel=1e-5)
    with pytest.raises(ValueError, match="teacher: logits"):
        OFALoss(feats.shape, (2, 4, 3))


def test_grad_at_golden():
    from distill.losses import grad_at_loss

    s, t = torch.tensor([[3.0, 4.0], [1.0, 0.0]]), torch.tensor([[0.0, 2.0], [0.0, -5.0]])
    # unit vectors: s -> (0.6, 0.8), (1, 0); t -> (0, 1), (0, -1)
    expected = (math.sqrt(0.36 + 0.04) + math.sqrt(1 + 1)) / 2
    assert grad_at_loss(s, t).item() == pytest.approx(expected, rel=1e-6)


def test_input_gradient_knowledge_is_d_ce_d_input_and_trains_by_double_backprop():
    from distill.losses import grad_at_loss
    from distill.objective import Objective, Term
    from distill.schemes import OfflineKD

    torch.manual_seed(0)
    student = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    teacher = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    objective = Objective(
        [Term("grad_at", grad_at_loss, student="input_grad", teacher="input_grad")], task_weight=0.0
    )
    scheme = OfflineKD(student, teacher, objective)
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, -1, 1])
    losses = scheme.step({"input": x, "target": y, "index": torch.arange(5)}, 0)
    # Independent check: the teacher's input gradient by hand.
    labels = torch.where(y >= 0, y, teacher(x).argmax(-1))
    xt = x.clone().requires_grad_()
    torch.nn.functional.cross_entropy(teacher(xt), labels, reduction="sum").backward()
    xs = x.clone().requires_grad_()
    (g_s,) = torch.autograd.grad(
        torch.nn.functional.cross_entropy(student(xs), labels, reduction="sum"), xs
    )
    assert losses["grad_at"].item() == pytest.approx(grad_at_loss(g_s, xt.grad).item(), rel=1e-5)
    losses["loss"].backward()
    assert student[0].weight.grad.abs().sum() > 0  # reached through the gradient (double backprop)
    assert all(p.grad is None for p in teacher.parameters())


def test_afd_golden():
    from distill.losses import AttentionFeatureLoss

    torch.manual_seed(0)
    s_layers = [torch.randn(2, 3, 4), torch.randn(2, 5)]
    t_layers = [torch.randn(2, 6), torch.randn(2, 4, 3)]
    afd = AttentionFeatureLoss([x.shape for x in s_layers], [x.shape for x in t_layers], dim=8)
    pool = lambda x: x.mean(-1) if x.dim() > 2 else x  # noqa: E731
    s_p = [pool(x) for x in s_layers]
    total = 0.0
    for j, t in enumerate(t_layers):
        tn = torch.nn.functional.normalize(pool(t), dim=1)
        q = afd.query[j](tn)
        per_sample = 0.0
        for n in range(2):
            scores = [
                float((afd.key[i](s_p[i])[n] @ q[n]).detach()) / math.sqrt(8) for i in range(2)
            ]
            w = [math.exp(v) / sum(math.exp(u) for u in scores) for v in scores]
            errs = [
                float(
                    ((torch.nn.functional.normalize(afd.proj[j][i](s_p[i]), dim=1)[n] - tn[n]) ** 2)
                    .mean()
                    .detach()
                )
                for i in range(2)
            ]
            per_sample += sum(a * b for a, b in zip(w, errs))
        total += per_sample / 2
    assert afd(s_layers, t_layers).item() == pytest.approx(total / 2, rel=1e-5)


def test_mgd_regenerates_from_masked_tokens_on_their_grid():
    from distill.losses.feature import MGDLoss
    from distill.objective import TokenAdapter

    torch.manual_seed(0)
    loss = MGDLoss((1, 16, 6), (1, 16, 10), ratio=0.5, tokens=True)
    s, t = torch.randn(3, 16, 6), torch.randn(3, 16, 10)
    torch.manual_seed(7)
    value = loss(s, t)
    torch.manual_seed(7)  # the same mask, recomputed by hand
    grid_s = s.transpose(1, 2).reshape(3, 6, 4, 4)
    grid_t = t.transpose(1, 2).reshape(3, 10, 4, 4)
    keep = (torch.rand(3, 1, 4, 4) >= 0.5).float()
    expected = ((loss.generate(loss.align(grid_s) * keep) - grid_t) ** 2).mean()
    assert float(value.detach()) == pytest.approx(float(expected.detach()), rel=1e-6)
    assert 0.2 < 1 - keep.mean() < 0.8  # about half the positions are dropped, all channels
    value.backward()
    assert loss.generate[0].weight.grad is not None
    with pytest.raises(ValueError, match="positions"):
        MGDLoss((1, 8, 10), (1, 8, 12))
    assert TokenAdapter((1, 16, 6), (1, 16, 10))(s).shape == (3, 16, 10)
    with pytest.raises(ValueError, match="same patch grid"):
        TokenAdapter((1, 16, 6), (1, 9, 10))
