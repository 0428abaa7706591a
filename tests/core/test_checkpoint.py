import os
import pickle

import pytest
import torch
from torch import nn

from distill.core.checkpoint import (
    atomic_write_bytes,
    load_checkpoint,
    load_into,
    load_weights,
    save_checkpoint,
    save_weights,
)
from distill.core.errors import CheckpointError


def test_round_trip_of_nested_state(tmp_path):
    state = {
        "optimizer": {
            "state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(2, 3)}},
            "param_groups": [{"lr": 0.1, "betas": (0.9, 0.99), "params": [0], "fused": None}],
        },
        "rng": {"python": (3, tuple(range(5)), None), "bf16": torch.randn(4).bfloat16()},
        "scalar": torch.tensor(7),
        "empty": {},
    }
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, state)
    back = load_checkpoint(path)
    assert set(back["optimizer"]["state"]) == {0}  # int keys stay ints
    assert back["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.99)
    assert back["rng"]["python"] == (3, (0, 1, 2, 3, 4), None)
    assert torch.equal(
        back["optimizer"]["state"][0]["exp_avg"], state["optimizer"]["state"][0]["exp_avg"]
    )
    assert back["rng"]["bf16"].dtype == torch.bfloat16
    assert back["scalar"].item() == 7 and back["empty"] == {}


def test_checksum_detects_a_flipped_byte(tmp_path):
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, {"w": torch.zeros(100)})
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF  # inside the tensor bytes
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(path)


def test_truncated_file_is_refused(tmp_path):
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, {"w": torch.zeros(100)})
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(path)


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_pickle_payload_is_refused_and_never_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps({"w": _Payload()}))
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    with pytest.raises(CheckpointError):
        load_weights(path)
    assert not (tmp_path / "PWNED").exists()


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, {"w": torch.ones(3)})
    before = path.read_bytes()

    def boom(_fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"w": torch.zeros(3)})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]  # no temp file left behind


def test_atomic_write_gives_normal_permissions(tmp_path):
    atomic_write_bytes(tmp_path / "f", b"x")
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "f").stat().st_mode & 0o777 == 0o666 & ~mask


def test_weights_round_trip_and_mismatch_message(tmp_path):
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    save_weights(tmp_path / "w.safetensors", model, {"model": "mlp"})
    state, info = load_weights(tmp_path / "w.safetensors")
    assert info == {"model": "mlp"}
    other = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    load_into(other, state, "student")
    assert torch.equal(other[0].weight, model[0].weight)
    wrong = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2))
    with pytest.raises(
        CheckpointError, match=r"shape mismatch 0.weight: file \(4, 3\) vs model \(5, 3\)"
    ):
        load_into(wrong, state, "student")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_weights(tmp_path / "missing.safetensors")


def test_torch_save_state_dicts_load_without_unpickling_objects(tmp_path, capsys):
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    state, info = load_weights(tmp_path / "plain.pt")
    assert info == {} and all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert "torch.load(weights_only=True)" in capsys.readouterr().err
    # a training script's checkpoint: the state dict under a key, saved from DDP
    ddp = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"epoch": 7, "state_dict": ddp, "optimizer": {}}, tmp_path / "ckpt.pt")
    state, _ = load_weights(tmp_path / "ckpt.pt")
    assert set(state) == set(model.state_dict())
    assert "under its key 'state_dict'" in capsys.readouterr().err
    torch.save(model, tmp_path / "whole.pt")  # needs the class: refused, nothing unpickled
    with pytest.raises(CheckpointError, match="holds Python objects"):
        load_weights(tmp_path / "whole.pt")


def test_weights_written_by_distill_are_verified_others_load_with_a_note(tmp_path, capsys):
    from safetensors.torch import save_file

    model = nn.Linear(3, 2)
    save_weights(tmp_path / "w.safetensors", model)
    data = bytearray((tmp_path / "w.safetensors").read_bytes())
    data[-2] ^= 0x01
    (tmp_path / "w.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_weights(tmp_path / "w.safetensors")
    save_file(model.state_dict(), str(tmp_path / "other.safetensors"))
    load_weights(tmp_path / "other.safetensors")
    assert "carries no checksum" in capsys.readouterr().err


def test_non_finite_weights_are_refused_on_load(tmp_path):
    from distill.models.weights import restore_weights

    state = nn.Linear(3, 2).state_dict()
    state["bias"][1] = float("inf")
    save_weights(tmp_path / "bad.safetensors", state)
    with pytest.raises(CheckpointError, match=r"teacher weights .* hold NaN or inf \(in bias\)"):
        restore_weights(nn.Linear(3, 2), tmp_path / "bad.safetensors", "teacher")


def test_random_states_round_trip_and_an_older_checkpoints_python_state_restores():
    """`random`'s state is kept as one tensor; a checkpoint from before (its 625 words as
    numbers) still restores it exactly."""
    import random

    from distill.loop.rng import rng_state, set_rng_state

    gen = torch.Generator().manual_seed(3)
    random.seed(11)
    state = rng_state(gen)
    assert isinstance(state["python"][1], torch.Tensor) and state["python"][1].numel() == 625
    expected = [random.random() for _ in range(3)]
    set_rng_state(state, gen)
    assert [random.random() for _ in range(3)] == expected
    version, words, gauss = state["python"]
    old = {**state, "python": (version, tuple(int(w) for w in words.tolist()), gauss)}
    set_rng_state(old, gen)
    assert [random.random() for _ in range(3)] == expected


def _header_and_data(blob: bytes) -> tuple[dict, bytes]:
    import json

    n = int.from_bytes(blob[:8], "little")
    return json.loads(blob[8 : 8 + n]), blob[8 + n :]


def test_serialize_matches_the_torch_writer():
    """The numpy path writes the same header (up to the order of its metadata, which
    safetensors itself does not fix) and the same bytes as safetensors' torch writer;
    dtypes numpy lacks (bfloat16) go through the torch writer."""
    from safetensors.torch import load as torch_load
    from safetensors.torch import save as torch_save

    from distill.core.checkpoint import serialize

    tensors = {
        "w": torch.randn(3, 4),
        "half": torch.randn(5).half(),
        "double": torch.randn(2, dtype=torch.float64),
        "step": torch.tensor(7),
        "empty": torch.zeros(0, 2),
        "mask": torch.tensor([True, False]),
        "bytes": torch.arange(6, dtype=torch.uint8),
    }
    meta = {"distill": "{}", "sha256": "x"}
    for extra in ({}, {"bf16": torch.randn(3).bfloat16()}):
        both = {**tensors, **extra}
        ours, theirs = serialize(both, meta), torch_save(both, metadata=meta)
        assert _header_and_data(ours) == _header_and_data(theirs)
        back = torch_load(ours)
        assert set(back) == set(both)
        assert all(back[k].dtype == v.dtype and torch.equal(back[k], v) for k, v in both.items())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_all_finite_finds_one_bad_value_in_any_float_dtype(dtype, bad):
    from distill.core.checkpoint import _non_finite, all_finite

    good = [torch.randn(4, 3).to(dtype), torch.randn(7).to(dtype)]
    assert all_finite(good)
    spoiled = good[1].clone()
    spoiled[5] = bad
    assert not all_finite([good[0], spoiled])
    assert not all_finite([spoiled.double(), good[0].float()])  # mixed dtypes, grouped
    tensors = {"modules.a": good[0], "modules.b": spoiled, "rng.c": spoiled.clone()}
    assert _non_finite(tensors, ("modules.",)) == ["modules.b"]


def test_background_writer_reuses_one_thread_holds_jobs_and_reraises(tmp_path):
    import threading
    import time

    from distill.core.writer import BackgroundWriter

    writer, ran = BackgroundWriter(idle_s=0.3), []

    def job(i):
        ran.append((i, threading.get_ident()))

    for i in range(3):
        writer.submit(lambda i=i: job(i))
        writer.wait()
    assert [i for i, _ in ran] == [0, 1, 2]
    assert len({ident for _, ident in ran}) == 1  # one thread for the writes in a row
    with writer.held():
        writer.submit(lambda: job(3))
        time.sleep(0.05)
        assert len(ran) == 3  # held: not started
        writer.wait()  # waiting inside held() still writes everything
        assert len(ran) == 4
        writer.submit(lambda: job(4))
    writer.wait()
    assert [i for i, _ in ran] == [0, 1, 2, 3, 4]
    deadline = time.monotonic() + 5
    while writer._running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not writer._running  # the idle thread ended
    assert ran[0][1] not in [t.ident for t in threading.enumerate() if t.is_alive()]

    def fails():
        raise OSError(28, "No space left on device")

    writer.submit(fails)
    writer.submit(lambda: job(5))  # dropped: a write before it failed
    with pytest.raises(OSError, match="No space"):
        writer.wait()
    writer.submit(lambda: job(6))
    writer.wait()
    assert [i for i, _ in ran][-1] == 6 and 5 not in [i for i, _ in ran]


def test_writer_reuses_a_files_copies_and_every_write_holds_its_own_values(tmp_path):
    """The second checkpoint of a file is copied into the tensors the first write was done
    with (one fused copy), yet each file holds the values of its own moment; a change of
    layout gets fresh copies."""
    from distill.core.writer import BackgroundWriter

    writer = BackgroundWriter()
    model = nn.Linear(4, 3)
    path = tmp_path / "last.safetensors"
    seen = []
    for step in range(3):
        with torch.no_grad():
            model.weight.fill_(float(step))
        save_checkpoint(path, {"modules": model.state_dict(), "step": step}, writer=writer)
        with torch.no_grad():
            model.weight.fill_(-1.0)  # training goes on: the file keeps the snapshot
        writer.wait()
        back = load_checkpoint(path)
        assert back["step"] == step and torch.equal(
            back["modules"]["weight"], torch.full((3, 4), float(step))
        )
        seen.append(id(writer._spare[str(path)]["modules.weight"]))
    assert seen[1] == seen[2]  # the same copies, refilled
    save_checkpoint(path, {"modules": nn.Linear(5, 3).state_dict(), "step": 9}, writer=writer)
    writer.wait()
    assert load_checkpoint(path)["modules"]["weight"].shape == (3, 5)  # new layout: fresh copies
    save_weights(tmp_path / "best.safetensors", model, writer=writer)
    writer.wait()
    assert torch.equal(load_weights(tmp_path / "best.safetensors")[0]["weight"], model.weight)
    writer.spare_bytes = 16  # a big state's copies are not kept between writes
    save_checkpoint(tmp_path / "big.safetensors", {"modules": model.state_dict()}, writer=writer)
    writer.wait()
    assert str(tmp_path / "big.safetensors") not in writer._spare


def test_plain_values_are_those_of_the_save_call_though_turned_into_json_later(tmp_path):
    """The checkpoint's JSON is made on the writer's thread, after the call returned: what
    the caller changes in its dicts and lists meanwhile must not reach the file."""
    from distill.core.writer import BackgroundWriter

    writer, path = BackgroundWriter(), tmp_path / "c.safetensors"
    state = {"trainer": {"epoch": 3, "best": 0.5}, "order": [1, 2], "w": torch.ones(2)}
    with writer.held():  # the job runs after the changes below
        save_checkpoint(path, state, writer=writer)
        state["trainer"]["epoch"] = 4
        state["order"].append(3)
        state["w"].fill_(7.0)
    writer.wait()
    back = load_checkpoint(path)
    assert back["trainer"] == {"epoch": 3, "best": 0.5} and back["order"] == [1, 2]
    assert torch.equal(back["w"], torch.ones(2))
