import pytest
import torch
import torch.nn.functional as F

from distill.losses import kd_loss, mse_loss
from distill.objective import ChannelAdapter, Objective, Schedule, Term
from distill.taps import Knowledge


def test_weight_schedule_ramps():
    w = Schedule(0.8, steps=10)
    assert w.at(0) == 0.0
    assert w.at(5) == pytest.approx(0.4)
    assert w.at(10) == w.at(1000) == 0.8
    c = Schedule(1.0, steps=10, ramp="cosine")
    assert c.at(5) == pytest.approx(0.5)
    assert c.at(2) < 0.2  # slow start
    with pytest.raises(ValueError, match="ramp"):
        Schedule(1.0, ramp="exp")


def test_delayed_schedule_phases_a_term_in():
    late = Schedule(0.5, steps=10, delay=100)
    assert late.at(0) == late.at(99) == 0.0
    assert late.at(105) == pytest.approx(0.25)
    assert late.at(110) == late.at(10_000) == 0.5
    step_on = Schedule(1.0, delay=3)  # no ramp: off, then on
    assert [step_on.at(i) for i in range(5)] == [0.0, 0.0, 0.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="delay"):
        Schedule(1.0, delay=-1)


def test_start_step_from_config(tmp_path):
    from helpers import kd_cfg, make_teacher

    from distill.app.build import build
    from distill.core.config import parse_config

    cfg = kd_cfg(tmp_path / "r", make_teacher(tmp_path / "t.safetensors"))
    cfg["objective"]["terms"].append(
        {
            "loss": "sp",
            "name": "late_sp",
            "student": "blocks.0",
            "teacher": "blocks.0",
            "start_step": 50,
            "warmup_steps": 10,
        }
    )
    term = build(parse_config(cfg)).objective.terms[1]
    assert term.weight.at(49) == 0.0 and term.weight.at(60) == 1.0


def test_objective_sums_weighted_terms_and_reports_components():
    torch.manual_seed(0)
    s = Knowledge(torch.randn(4, 5, requires_grad=True), {"f": torch.randn(4, 3)})
    t = Knowledge(torch.randn(4, 5), {"g": torch.randn(4, 3)})
    y = torch.tensor([0, 1, 2, 3])
    obj = Objective(
        [
            Term("kd", kd_loss, weight=0.9, loss_args={"temperature": 2.0}),
            Term(
                "hint",
                mse_loss,
                weight=Schedule(2.0, steps=4),
                student="f",
                teacher="g",
            ),
        ],
        task_weight=0.1,
    )
    total, parts = obj(s, t, {"target": y}, step=2)
    ce = F.cross_entropy(s.logits, y)
    kd = kd_loss(s.logits, t.logits, temperature=2.0)
    hint = mse_loss(s.feats["f"], t.feats["g"])
    assert set(parts) == {"task", "kd", "hint"}
    assert parts["task"].item() == pytest.approx(ce.item())
    assert total.item() == pytest.approx((0.1 * ce + 0.9 * kd + 1.0 * hint).item(), rel=1e-6)
    assert obj.student_layers() == ["f"] and obj.teacher_layers() == ["g"]


def test_objective_rejects_duplicate_names_and_missing_teacher():
    with pytest.raises(ValueError, match="unique"):
        Objective([Term("kd", kd_loss), Term("kd", kd_loss)])
    obj = Objective([Term("kd", kd_loss)])
    with pytest.raises(ValueError, match="needs a teacher"):
        obj(Knowledge(torch.randn(2, 3)), None, {"target": torch.tensor([0, 1])}, 0)


@pytest.mark.parametrize(
    "s_shape,t_shape",
    [
        ((2, 4), (2, 6)),
        ((2, 4, 10), (2, 8, 10)),
        ((2, 4, 10), (2, 8, 5)),
        ((2, 3, 4, 4), (2, 5, 2, 2)),
    ],
)
def test_channel_adapter_maps_shapes(s_shape, t_shape):
    adapter = ChannelAdapter(s_shape, t_shape, resize="pool")
    out = adapter(torch.randn(s_shape))
    assert out.shape == torch.Size(t_shape)
    assert sum(p.numel() for p in adapter.parameters()) == s_shape[1] * t_shape[1] + t_shape[1]


def test_adapter_rejects_rank_mismatch():
    with pytest.raises(ValueError, match="same number of dims"):
        ChannelAdapter((2, 4), (2, 4, 10))


def test_task_loss_ignores_unlabelled_rows():
    logits = torch.randn(4, 3, requires_grad=True)
    targets = torch.tensor([0, -1, 2, -1])
    obj = Objective()
    loss = obj.task_loss(logits, targets)
    assert loss.item() == pytest.approx(
        F.cross_entropy(logits[[0, 2]], targets[[0, 2]]).item(), rel=1e-6
    )
    loss.backward()
    assert torch.all(logits.grad[[1, 3]] == 0)
    none = obj.task_loss(logits, torch.tensor([-1, -1, -1, -1]))
    assert none.item() == 0.0  # finite, so a batch of transfer data alone is fine


def test_adapter_resize_must_be_chosen_and_both_modes_work():
    with pytest.raises(ValueError, match="resize: pool or resize: interpolate"):
        ChannelAdapter((2, 4, 10), (2, 8, 5))
    x = torch.randn(2, 4, 6, 6)
    for mode in ("pool", "interpolate"):
        assert ChannelAdapter((2, 4, 6, 6), (2, 8, 3, 3), resize=mode)(x).shape == (2, 8, 3, 3)
    up = ChannelAdapter((2, 4, 5), (2, 3, 10), resize="interpolate")
    assert up(torch.randn(2, 4, 5)).shape == (2, 3, 10)


def test_conv3x3_adapter_mixes_neighbours():
    from distill.objective import ADAPTERS

    adapter = ADAPTERS["conv3x3"]((1, 2, 8), (1, 3, 8))
    assert isinstance(adapter.proj, torch.nn.Conv1d) and adapter.proj.kernel_size == (3,)
    x = torch.zeros(1, 2, 8)
    x[0, :, 4] = 1.0
    out = adapter(x) - adapter(torch.zeros(1, 2, 8))
    assert out[0, :, 3].abs().sum() > 0 and out[0, :, 6].abs().sum() == 0  # reach of one position


def test_feature_to_tokens_adapter_follows_the_patch_order_of_a_vit():
    """A CNN map lands on the token a ViT's patch embedding gives the same place."""
    from distill.models.zoo import Transformer
    from distill.objective import ADAPTERS

    adapter = ADAPTERS["feature_to_tokens"]((2, 1, 4, 4), (2, 16, 1))
    with torch.no_grad():
        adapter.adapter.proj.weight.fill_(1.0)
        adapter.adapter.proj.bias.zero_()
    grid = torch.arange(16.0).reshape(1, 1, 4, 4)
    tokens = adapter(grid)
    assert tokens.shape == (1, 16, 1)
    vit = Transformer((1, 8, 8), 10, dim=1, heads=1, patch=2)
    with torch.no_grad():  # the embedding reads the top-left pixel of each patch
        vit.embed.weight.zero_()
        vit.embed.weight[0, 0, 0, 0] = 1.0
        vit.embed.bias.zero_()
    image = torch.zeros(1, 1, 8, 8)
    image[0, 0, ::2, ::2] = grid[0, 0]
    patch_tokens = vit.embed(image).flatten(2).transpose(1, 2)
    torch.testing.assert_close(tokens, patch_tokens)
    # a 2x2 map reaches a 4x4 grid only with an explicit resize; a 1-D map keeps its length
    with pytest.raises(ValueError, match="resize"):
        ADAPTERS["feature_to_tokens"]((2, 8, 2, 2), (2, 16, 6))
    up = ADAPTERS["feature_to_tokens"]((2, 8, 2, 2), (2, 16, 6), resize="interpolate")
    assert up(torch.randn(3, 8, 2, 2)).shape == (3, 16, 6)
    assert ADAPTERS["feature_to_tokens"]((2, 8, 20), (2, 5, 6), resize="pool")(
        torch.randn(3, 8, 20)
    ).shape == (3, 5, 6)
    with pytest.raises(ValueError, match="patch grid"):
        ADAPTERS["feature_to_tokens"]((2, 8, 3, 5), (2, 7, 6), resize="pool")
