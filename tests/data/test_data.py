import numpy as np
import pytest
import torch

from distill.core.errors import ConfigError
from distill.data import AUGMENTATIONS, build_augmentation, load_dataset, split_indices
from distill.data.raw import cache_dir
from distill.models import build_model


def test_mnist1d_is_generated_locally_and_cached():
    d = load_dataset("mnist1d")
    assert d.input_shape == (1, 40) and d.num_classes == 10
    assert len(d.train) + len(d.val) == 4000 and len(d.test) == 1000
    assert list(cache_dir().glob("mnist1d-5000-42-*.npz"))
    again = load_dataset("mnist1d")
    assert torch.equal(d.train.inputs, again.train.inputs)


def test_corrupt_mnist1d_cache_is_rebuilt():
    load_dataset("mnist1d", num_samples=200)
    [path] = cache_dir().glob("mnist1d-200-42-*.npz")
    path.write_bytes(b"garbage")
    d = load_dataset("mnist1d", num_samples=200)
    assert len(d.test) == 40


def test_digits_and_train_samples():
    d = load_dataset("digits", train_samples=100)
    assert d.input_shape == (1, 8, 8) and d.train.inputs.max() <= 1.0
    assert 95 <= len(d.train) <= 105
    assert len(torch.unique(d.train.targets)) == 10  # stratified


def test_split_is_stratified_and_disjoint():
    labels = np.repeat(np.arange(4), 50)
    kept, held = split_indices(labels, 0.2, seed=0)
    assert len(set(kept) & set(held)) == 0 and len(kept) + len(held) == 200
    assert np.bincount(labels[held]).tolist() == [10, 10, 10, 10]


def test_unknown_dataset_and_bad_options():
    with pytest.raises(ConfigError, match="did you mean 'digits'"):
        load_dataset("digit")
    with pytest.raises(ConfigError, match="num_sample"):
        load_dataset("synthetic", num_sample=3)


@pytest.mark.parametrize("name", list(AUGMENTATIONS))
def test_augmentations_keep_shape_and_follow_the_generator(name):
    x = torch.randn(6, 1, 40)
    aug = build_augmentation([(name, {})])
    a = aug(x, torch.Generator().manual_seed(1))
    b = aug(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, x)


def test_shift_moves_each_sample_and_zero_fills():
    x = torch.arange(1.0, 11.0).repeat(8, 1, 1)  # (8, 1, 10), no zeros in the signal
    out = AUGMENTATIONS["shift"](x, torch.Generator().manual_seed(0), max_shift=3)
    idx = torch.arange(10)
    for row in out[:, 0]:
        matches = [
            s
            for s in range(-3, 4)
            if torch.equal(row, torch.roll(x[0, 0], s) * ((idx - s >= 0) & (idx - s < 10)))
        ]
        assert len(matches) == 1
    assert len({tuple(r.tolist()) for r in out[:, 0]}) > 1  # not all the same shift


@pytest.mark.parametrize(
    "name,shape",
    [
        ("mlp", (1, 40)),
        ("convnet", (1, 40)),
        ("convnet", (1, 8, 8)),
        ("resnet", (1, 40)),
        ("resnet", (1, 8, 8)),
        ("mlp", (16,)),
    ],
)
def test_models_build_for_each_input_kind(name, shape):
    model = build_model(name, shape, 7, {})
    assert model(torch.randn(3, *shape)).shape == (3, 7)


def test_bad_model_args_name_the_valid_ones():
    with pytest.raises(ConfigError, match="its arguments are"):
        build_model("convnet", (1, 40), 10, {"chanels": [4]})
    with pytest.raises(ConfigError, match="did you mean 'resnet'"):
        build_model("resnett", (1, 40), 10)
    with pytest.raises(ConfigError, match="cannot import"):
        build_model("nosuchpkg.mod:Model", (1, 40), 10)


def test_unlabeled_transfer_set_keeps_inputs_without_labels():
    full = load_dataset("digits")
    semi = load_dataset("digits", train_samples=200, unlabeled=True)
    assert len(semi.train) == len(full.train)
    assert torch.equal(semi.train.inputs, full.train.inputs)
    labelled = semi.train.targets >= 0
    assert 195 <= int(labelled.sum()) <= 205
    assert torch.equal(semi.train.targets[labelled], full.train.targets[labelled])
    assert torch.all(semi.val.targets >= 0) and torch.all(semi.test.targets >= 0)
    with pytest.raises(ConfigError, match="needs data.train_samples"):
        load_dataset("digits", unlabeled=True)


def test_truncated_dataset_cache_is_said_and_made_again(capsys):
    load_dataset("mnist1d", num_samples=220)
    [path] = cache_dir().glob("mnist1d-220-42-*.npz")
    good = load_dataset("mnist1d", num_samples=220).train.inputs
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # a killed download/copy
    capsys.readouterr()
    again = load_dataset("mnist1d", num_samples=220)
    err = capsys.readouterr().err
    assert "is damaged: it is unreadable (BadZipFile" in err and "making it again" in err
    assert torch.equal(again.train.inputs, good)
    raw = bytearray(path.read_bytes())  # a flipped byte deep inside the arrays
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    capsys.readouterr()
    assert torch.equal(load_dataset("mnist1d", num_samples=220).train.inputs, good)
    assert "damaged" in capsys.readouterr().err


def test_user_loader_class_count_is_fixed_or_inferred_and_said(tmp_path, monkeypatch, capsys):
    (tmp_path / "myloader.py").write_text(
        "import numpy as np\n"
        "def load(n=60, fixed=False):\n"
        "    rng = np.random.default_rng(0)\n"
        "    x, y = rng.normal(size=(n, 4)).astype('float32'), np.arange(n) % 3\n"
        "    out = {'x': x, 'y': y, 'x_test': x[:9], 'y_test': y[:9]}\n"
        "    return {**out, 'num_classes': 5} if fixed else out\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    d = load_dataset("myloader:load", n=90)
    assert d.num_classes == 3
    assert "3 classes (labels 0..2), inferred from its labels" in capsys.readouterr().err
    fixed = load_dataset("myloader:load", fixed=True)
    assert fixed.num_classes == 5 and "inferred" not in capsys.readouterr().err


def test_shift_refuses_tabular_inputs_but_noise_fits_any():
    from distill.data import augmentation_problem

    assert augmentation_problem("shift", (8,)) is not None
    assert augmentation_problem("shift", (1, 40)) is None
    assert augmentation_problem("shift", (1, 8, 8)) is None
    assert augmentation_problem("noise", (8,)) is None
