"""Dense prediction: the scenes testbed, detector targets and metrics, dense KD losses."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import REPO

from distill.app.run import run_experiment
from distill.app.validate import validate
from distill.core.checkpoint import save_weights
from distill.core.config import load_config, parse_config
from distill.core.errors import ConfigError
from distill.dense import detection as det
from distill.dense.models import Detector, SegNet
from distill.dense.scenes import load_scenes
from distill.dense.segmentation import confusion, segmentation_metrics
from distill.losses import dense as dl
from distill.models import build_model

ROOT = REPO
EXAMPLES = sorted((ROOT / "examples" / "dense").glob("*.yaml"))
SMALL = {"num_train": 48, "num_val": 16, "num_test": 16}


# ---------------------------------------------------------------------------- scenes
def test_scene_boxes_and_masks_agree():
    d = load_scenes(task="detection", **SMALL)
    s = load_scenes(task="segmentation", **SMALL)
    assert d.train.inputs.shape == (48, 1, 64, 64) and d.num_classes == 10 and s.num_classes == 11
    assert torch.equal(d.train.inputs, s.train.inputs)  # the same scenes, two label kinds
    for boxes, mask in zip(d.train.targets, s.train.targets):
        rows = boxes[boxes[:, 0] >= 0]
        assert 1 <= len(rows) <= 4
        covered = torch.zeros_like(mask, dtype=torch.bool)
        for c, x1, y1, x2, y2 in rows.tolist():
            region = mask[int(y1) : int(y2), int(x1) : int(x2)]
            assert (region == c + 1).any()  # the box holds its digit's ink
            assert 12 * 0.4 <= x2 - x1 <= 24 and 12 * 0.4 <= y2 - y1 <= 24
            covered[int(y1) : int(y2), int(x1) : int(x2)] = True
        assert not (mask[~covered] > 0).any()  # every ink pixel lies in some box
    with pytest.raises(ConfigError, match="task"):
        load_scenes(task="keypoints")


# ------------------------------------------------------------------------- detection
def _detector():
    return Detector((1, 64, 64), 10, widths=(4, 8, 8), fpn=8)


def test_detector_layout_and_decoding():
    m = _detector()
    out = m(torch.zeros(2, 1, 64, 64))
    assert out.shape == (2, 16 * 16 + 8 * 8, 15)
    assert torch.equal(m.points[0], torch.tensor([2.0, 2.0]))  # first stride-4 centre
    assert torch.equal(m.points[256], torch.tensor([4.0, 4.0]))  # first stride-8 centre
    raw_d = math.log(math.exp(2.0) - 1)  # softplus^-1(2): distance 2 strides
    packed = torch.zeros(1, len(m.points), 15)
    packed[..., 10:14] = raw_d
    boxes, scores = m.decode(packed)
    torch.testing.assert_close(boxes[0, 0], torch.tensor([-6.0, -6.0, 10.0, 10.0]))
    torch.testing.assert_close(boxes[0, 256], torch.tensor([-12.0, -12.0, 20.0, 20.0]))
    torch.testing.assert_close(scores[0, 0, 0], torch.tensor(0.5))


def test_giou_and_ltrb_invariance():
    a = torch.tensor([0.0, 0.0, 2.0, 2.0])
    assert float(det.giou(a, a)) == pytest.approx(1.0)
    far = torch.tensor([10.0, 10.0, 12.0, 12.0])
    assert float(det.giou(a, far)) == pytest.approx(0 - (144 - 8) / 144)
    d1, d2 = torch.tensor([1.0, 2.0, 3.0, 1.0]), torch.tensor([2.0, 1.0, 1.0, 2.0])
    assert float(det.ltrb_giou(d1, d2)) == pytest.approx(float(det.ltrb_giou(3 * d1, 3 * d2)))
    shifted = det.giou(torch.cat([-d1[:2], d1[2:]]) + 5, torch.cat([-d2[:2], d2[2:]]) + 5)
    assert float(det.ltrb_giou(d1, d2)) == pytest.approx(float(shifted))


def test_assignment_uses_level_centre_and_smallest_box():
    m = _detector()
    small = torch.tensor([[[3.0, 10.0, 10.0, 24.0, 26.0], [-1, 0, 0, 0, 0]]])  # side 16: level 0
    cls, box, gt = det.assign(small, m.points, m.strides, m.levels)
    pos = cls[0] >= 0
    assert pos.any() and (m.levels[pos] == 0).all() and (cls[0][pos] == 3).all()
    p = m.points[pos]
    assert ((p[:, 0] - 17).abs() < 6).all() and ((p[:, 1] - 18).abs() < 6).all()
    big = torch.tensor([[[5.0, 10.0, 10.0, 34.0, 34.0]]])  # side 24: level 1
    cls, _, _ = det.assign(big, m.points, m.strides, m.levels)
    assert (m.levels[cls[0] >= 0] == 1).all()
    nested = torch.tensor([[[1.0, 0.0, 0.0, 40.0, 40.0], [2.0, 16.0, 16.0, 24.0, 24.0]]])
    cls, _, gt = det.assign(nested, m.points, m.strides, m.levels, split=100.0)
    centre = ((m.points - 20).abs() < 2).all(-1) & (m.levels == 0)
    assert (cls[0][centre] == 2).all() and (gt[0][centre] == 1).all()  # the smaller box wins


def test_detection_loss_is_small_for_a_perfect_prediction():
    m = _detector()
    targets = torch.tensor([[[3.0, 10.0, 10.0, 24.0, 26.0]]])
    cls, box, _ = det.assign(targets, m.points, m.strides, m.levels)
    pos = cls[0] >= 0
    out = torch.full((1, len(m.points), 15), -10.0)
    out[0, pos, 3] = 10.0
    p, s = m.points[pos], m.strides[pos][:, None]
    d = torch.cat([p - box[0, pos, :2], box[0, pos, 2:] - p], -1) / s
    out[0, pos, 10:14] = torch.log(torch.expm1(d))
    lr, tb = d[:, [0, 2]], d[:, [1, 3]]
    ctr = torch.sqrt(lr.min(-1).values / lr.max(-1).values * tb.min(-1).values / tb.max(-1).values)
    out[0, pos, 14] = torch.logit(ctr)
    loss = det.detection_loss(out, targets, m.points, m.strides, m.levels)
    assert float(loss["box"]) < 1e-5 and float(loss["cls"]) < 1e-3
    # the centerness BCE is at its minimum: the entropy of the targets
    entropy = F.binary_cross_entropy(ctr, ctr)
    assert float(loss["ctr"]) == pytest.approx(float(entropy), abs=1e-5)
    worse = out.clone()
    worse[0, pos, 10:14] += 1.0
    assert float(det.detection_loss(worse, targets, m.points, m.strides, m.levels)["box"]) > 0.05


def test_nms_and_average_precision():
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]])
    keep = det.nms(boxes, torch.tensor([0.9, 0.8, 0.7]), iou=0.5)
    assert keep.tolist() == [0, 2]
    tp = torch.tensor([True, False, True])
    ap = det.average_precision(tp, torch.tensor([0.9, 0.8, 0.7]), n_gt=2)
    # recall 0.5 at precision 1, recall 1 at precision 2/3: 101-point envelope
    assert ap == pytest.approx((51 * 1.0 + 50 * (2 / 3)) / 101)
    assert det.average_precision(torch.tensor([True]), torch.tensor([1.0]), 1) == 1.0


def test_map_matches_overlap_thresholds():
    gt = torch.tensor([[[2.0, 0, 0, 10, 10], [-1, 0, 0, 0, 0]]])
    exact = [(torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([0.9]), torch.tensor([2]))]
    assert det.mean_average_precision(exact, gt, 10)["map"] == pytest.approx(1.0)
    # IoU 0.64: a hit at 0.5 and 0.6, a miss from 0.65 up
    shifted = [(torch.tensor([[0.0, 0, 10, 6.4]]), torch.tensor([0.9]), torch.tensor([2]))]
    m = det.mean_average_precision(shifted, gt, 10)
    assert m["map50"] == 1.0 and m["map75"] == 0.0 and m["map"] == pytest.approx(0.3)
    wrong_class = [(exact[0][0], exact[0][1], torch.tensor([3]))]
    assert det.mean_average_precision(wrong_class, gt, 10)["map"] == 0.0


def test_mean_iou():
    target = torch.tensor([[0, 0, 1, 1], [0, 2, 2, -1]])
    pred = torch.tensor([[0, 1, 1, 1], [0, 2, 0, 2]])
    m = segmentation_metrics(confusion(pred, target, 3))
    # class 0: tp 2, fp 1, fn 1 -> 1/2; class 1: tp 2, fp 1 -> 2/3; class 2: tp 1, fn 1 -> 1/2
    assert m["miou"] == pytest.approx((0.5 + 2 / 3 + 0.5) / 3)
    assert m["pixel_acc"] == pytest.approx(5 / 7)


# ------------------------------------------------------------------------ KD losses
def test_imitation_mask_selects_locations_near_objects():
    targets = torch.tensor([[[0.0, 8.0, 8.0, 24.0, 24.0]]])
    mask = dl.imitation_mask(targets, (16, 16), 64, anchor=4.0, psi=0.5)[0]
    assert mask[4, 4] and mask[3, 3]  # the anchor centred on the box
    assert not mask[12, 12] and not mask[0, 15]  # far away
    strict = dl.imitation_mask(targets, (16, 16), 64, anchor=4.0, psi=0.999)[0]
    assert strict.sum() < mask.sum() and strict[3:5, 3:5].any()
    empty = dl.imitation_mask(torch.full((1, 2, 5), -1.0), (16, 16), 64)
    assert not empty.any()


def test_fg_imitation_ignores_background():
    targets = torch.tensor([[[0.0, 8.0, 8.0, 24.0, 24.0]]])
    t = torch.randn(1, 4, 16, 16)
    s = t.clone()
    s[..., 12:, 12:] += 5.0  # differences away from the object do not count
    assert float(dl.fg_imitation(s, t, targets=targets)) == 0.0
    s[..., 4, 4] += 1.0
    mask = dl.imitation_mask(targets, (16, 16), 64)
    assert float(dl.fg_imitation(s, t, targets=targets)) == pytest.approx(4 / (2 * mask.sum()))


def test_detection_response_losses():
    torch.manual_seed(0)
    t = torch.randn(2, 20, 15)
    assert float(dl.det_cls_kd(t, t)) == pytest.approx(0.0, abs=1e-6)
    assert float(dl.det_obj_kd(t, t)) == pytest.approx(0.0, abs=1e-6)
    assert float(dl.det_box_kd(t, t, threshold=0.0)) == pytest.approx(0.0, abs=1e-6)
    s = torch.randn(2, 20, 15, requires_grad=True)
    temp = 2.0
    p_t, p_s = torch.sigmoid(t[..., :10] / temp), torch.sigmoid(s[..., :10] / temp)
    kl = (p_t * (p_t / p_s).log() + (1 - p_t) * ((1 - p_t) / (1 - p_s)).log()).sum(-1)
    w = torch.sqrt(torch.sigmoid(t[..., :10]).max(-1).values * torch.sigmoid(t[..., 14]))
    expected = temp**2 * (w * kl).sum() / w.sum()
    torch.testing.assert_close(dl.det_cls_kd(s, t, temperature=temp), expected)
    torch.testing.assert_close(
        dl.det_cls_kd(s, t, temperature=temp, weighting="none"), temp**2 * kl.mean()
    )
    loss = dl.det_box_kd(s, t, kind="l1", threshold=0.0)
    d_s, d_t = F.softplus(s[..., 10:14]), F.softplus(t[..., 10:14])
    torch.testing.assert_close(loss, (w * (d_s - d_t).abs().sum(-1)).sum() / w.sum())
    assert float(dl.det_box_kd(s, t, threshold=1.0).detach()) == 0.0  # the teacher sees nothing
    c_t, c_s = torch.sigmoid(t[..., 14] / 3.0), torch.sigmoid(s[..., 14] / 3.0)
    obj = (c_t * (c_t / c_s).log() + (1 - c_t) * ((1 - c_t) / (1 - c_s)).log()).mean()
    torch.testing.assert_close(dl.det_obj_kd(s, t, temperature=3.0), 9 * obj)
    (dl.det_cls_kd(s, t) + loss + dl.det_obj_kd(s, t)).backward()
    assert s.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="packed"):
        dl.det_cls_kd(torch.randn(2, 5), torch.randn(2, 5))


def test_cwd_pixel_kd_and_affinity_formulas():
    torch.manual_seed(0)
    s, t = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5)
    p_t = F.softmax(t.flatten(2) / 4, -1)
    kl = (p_t * (p_t.log() - F.log_softmax(s.flatten(2) / 4, -1))).sum(-1)
    torch.testing.assert_close(dl.cwd_loss(s, t), 16 * kl.mean())
    q_t = F.softmax(t / 2, 1)
    kl_pix = (q_t * (q_t.log() - F.log_softmax(s / 2, 1))).sum(1)
    torch.testing.assert_close(dl.pixel_kd(s, t, temperature=2.0), 4 * kl_pix.mean())
    wide = torch.cat([t, t], 1)  # other width, same directions: the same affinity
    assert float(dl.pairwise_affinity(wide, t, grid=2)) == pytest.approx(0.0, abs=1e-6)
    assert float(dl.pairwise_affinity(s, t, grid=2)) > 0

    def affinity(x):  # 2x2 nodes by average pooling, cosine similarity of every pair
        nodes = F.normalize(F.adaptive_avg_pool2d(x, 2).flatten(2), dim=1)
        return nodes.transpose(1, 2) @ nodes

    expected = (affinity(s) - affinity(t)).pow(2).mean()
    torch.testing.assert_close(dl.pairwise_affinity(s, t, grid=2), expected)


def test_adaptive_level_weights_are_learnt():
    loss = dl.AdaptiveLevelImitation([(2, 4, 16, 16), (2, 4, 8, 8)], [(2, 6, 16, 16), (2, 6, 8, 8)])
    targets = torch.tensor([[[0.0, 8, 8, 24, 24]], [[1.0, 30, 30, 50, 50]]])
    s = [torch.randn(2, 4, 16, 16), torch.randn(2, 4, 8, 8)]
    t = [torch.randn(2, 6, 16, 16), torch.randn(2, 6, 8, 8)]
    with torch.no_grad():
        loss.log_var.copy_(torch.tensor([0.5, -0.5]))
    parts = loss.level_losses(s, t, targets)
    expected = sum(math.exp(-v) * p + v for v, p in zip([0.5, -0.5], parts))
    value = loss(s, t, targets=targets)
    torch.testing.assert_close(value, expected)
    value.backward()
    assert loss.log_var.grad.abs().sum() > 0


def test_cirkd_relations_follow_their_formula():
    """With an empty memory and every pixel sampled, the loss is the mean KL of the teacher's
    over the student's relation distributions to the batch's pixels, plus the same to the
    batch's class regions."""
    torch.manual_seed(0)
    loss = dl.CIRKDLoss((1, 3, 4, 4), (1, 5, 4, 4), pixels=16, tau=0.5, region_tau=0.2).eval()
    s, t = torch.randn(1, 3, 4, 4), torch.randn(1, 5, 4, 4)
    masks = torch.zeros(1, 4, 4, dtype=torch.long)
    masks[:, 2:] = 1
    zs = F.normalize(loss.project(s), dim=1)[0].flatten(1).t()  # (16, 5)
    zt = F.normalize(t, dim=1)[0].flatten(1).t()

    def relation(contrast, tau):
        log_s = F.log_softmax(zs @ contrast.t() / tau, -1)
        log_t = F.log_softmax(zt @ contrast.t() / tau, -1)
        return (log_t.exp() * (log_t - log_s)).sum(-1).mean()

    regions = torch.stack([F.normalize(zt[masks.flatten() == c].mean(0), dim=0) for c in (0, 1)])
    expected = relation(zt, 0.5) + relation(regions, 0.2)
    torch.testing.assert_close(loss(s, t, targets=masks), expected, atol=1e-5, rtol=1e-5)


def test_cirkd_memory_and_gradients():
    loss = dl.CIRKDLoss((2, 4, 8, 8), (2, 6, 8, 8), memory=10, regions=4, pixels=6)
    s = torch.randn(2, 4, 8, 8, requires_grad=True)
    t = torch.randn(2, 6, 8, 8)
    masks = torch.zeros(2, 32, 32, dtype=torch.long)
    masks[:, :16] = 3
    loss.eval()
    loss(s, t, targets=masks)
    assert loss.counts.tolist() == [0, 0]  # a dry (eval) call leaves the memory alone
    loss.train()
    value = loss(s, t, targets=masks)
    assert loss.counts.tolist() == [6, 4]  # 6 pixels, 2 images x 2 regions
    value.backward()
    assert torch.isfinite(value) and value > 0 and s.grad.abs().sum() > 0
    loss(s.detach(), t, targets=masks)
    assert loss.counts.tolist() == [12, 8]  # FIFO: the banks wrap around
    assert torch.allclose(loss.pixel_bank.norm(dim=1), torch.ones(10), atol=1e-5)


# ---------------------------------------------------------------------------- runs
def _dense_cfg(run_dir: Path, task: str, model: dict, **kw) -> dict:
    monitor = "map" if task == "detection" else "miou"
    cfg = {
        "name": "dense",
        "run_dir": str(run_dir),
        "scheme": {"name": "dense", "args": {"task": task}},
        "data": {"name": "scenes", "options": {"task": task, **SMALL}},
        "student": model,
        "train": {"epochs": 1, "batch_size": 16, "monitor": monitor, "progress": False},
    }
    cfg.update(kw)
    return cfg


@pytest.mark.parametrize("task", ["detection", "segmentation"])
def test_dense_teacher_and_students_end_to_end(tmp_path, task):
    if task == "detection":
        big = {"name": "detector", "args": {"widths": [8, 16, 16], "fpn": 16}}
        small = {"name": "detector", "args": {"widths": [4, 8, 8], "fpn": 8}}
        terms = [
            {"loss": "det_cls_kd"},
            {"loss": "det_box_kd", "args": {"threshold": 0.0}},
            {"loss": "det_obj_kd"},
            {
                "loss": "adaptive_levels",
                "student": ["fpn.0", "fpn.1"],
                "teacher": ["fpn.0", "fpn.1"],
            },
            {"loss": "cwd", "student": "fpn.0", "teacher": "fpn.0", "adapter": "conv1x1"},
        ]
    else:
        big = {"name": "segnet", "args": {"widths": [8, 16]}}
        small = {"name": "segnet", "args": {"widths": [4, 8]}}
        terms = [
            {"loss": "pixel_kd"},
            {"loss": "pairwise_affinity", "student": "dec", "teacher": "dec"},
            {"loss": "cirkd", "student": "dec", "teacher": "dec", "args": {"memory": 64}},
        ]
    teacher = run_experiment(parse_config(_dense_cfg(tmp_path / "t", task, big)))
    metric = "test_map" if task == "detection" else "test_miou"
    assert teacher["complete"] and 0 <= teacher[metric] <= 1
    cfg = _dense_cfg(
        tmp_path / "s",
        task,
        small,
        teacher={**big, "weights": teacher["run_dir"]},
        objective={"terms": terms},
    )
    result = run_experiment(parse_config(cfg))
    assert result["complete"] and result["params"] < result["teacher_params"]
    assert result[f"teacher_{metric}"] == pytest.approx(teacher[metric])
    assert result["latency_ms_b32_cpu"] > 0


def test_dense_needs_its_metric_and_a_detector(tmp_path):
    from distill.app.build import build

    cfg = _dense_cfg(tmp_path, "detection", {"name": "detector", "args": {"widths": [4, 8, 8]}})
    cfg["train"]["monitor"] = "acc"
    with pytest.raises(ConfigError, match="monitor: map"):
        build(parse_config(cfg))
    cfg = _dense_cfg(tmp_path, "detection", {"name": "segnet"})
    with pytest.raises(ConfigError, match="needs a detector"):
        build(parse_config(cfg))
    from helpers import synthetic_cfg

    plain = synthetic_cfg(tmp_path)
    plain["train"]["monitor"] = "map"
    with pytest.raises(ConfigError, match="detection/segmentation metric"):
        build(parse_config(plain))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_dense_example_validates_and_trains(path, tmp_path):
    small = [f"data.options.{k}={v}" for k, v in SMALL.items()]
    overrides = [f"run_dir={tmp_path / 'run'}", "train.progress=false", *small]
    cfg = load_config(path, overrides)
    if cfg.teacher is not None:  # an untrained teacher of the configured shape
        classes = 10 if cfg.scheme.args["task"] == "detection" else 11
        model = build_model(cfg.teacher.name, (1, 64, 64), classes, cfg.teacher.args)
        save_weights(tmp_path / "teacher.safetensors", model)
        overrides.append(f"teacher.weights={tmp_path / 'teacher.safetensors'}")
    cfg = load_config(path, [*overrides, "train.max_steps=2"])
    assert validate(cfg) == []
    assert run_experiment(cfg)["steps"] == 2


def test_segnet_shapes():
    out = SegNet((1, 64, 64), 11, widths=(4, 8))(torch.zeros(2, 1, 64, 64))
    assert out.shape == (2, 11, 64, 64)
