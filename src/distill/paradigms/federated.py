"""Federated distillation: clients that never share data or weights, only predictions.

`distill federated CONFIG` simulates the surveys' federated-learning application in the style
of FedMD (Li & Wang 2019) with a server model as in FedDF (Lin et al. 2020):

1. The training split is cut into a *public* unlabelled transfer set (its labels are thrown
   away) and private data, dealt to `clients` clients non-IID: each class is shared out by
   proportions drawn from Dirichlet(alpha) (Hsu et al. 2019), small alpha = few classes each.
2. Every client trains on its private data alone (the one training loop, scheme supervised).
3. Each round, every client sends one message: its logits on the public inputs. The server
   averages the clients' softmax (the consensus), distils its own model on the public set
   towards it, and sends the consensus back. Each client then *digests* it (KD on the public
   set) and *revisits* its private data (supervised), and the next round begins.

Nothing but (public-set size x classes) logits and the consensus ever crosses the `Channel`,
which records every message, so a test can check that no raw input leaves a client. The
report compares the server with the clients alone and with centralised training on the
pooled private data (the upper bound that federated learning gives up).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from distill.core.config import DataConfig, ModelConfig, RunDirMixin, load_command_config
from distill.core.errors import ConfigError
from distill.core.settings import Strict, TrainSettings
from distill.data.core import ArrayDataset
from distill.schemes.base import SchemeBase, soft_kl


class FederatedConfig(RunDirMixin, Strict):
    name: str = "federated"
    run_dir: str | None = None
    data: DataConfig = DataConfig()
    client: ModelConfig  # every client's model (each trains its own copy)
    server: ModelConfig | None = None  # default: the client architecture
    clients: int = Field(5, ge=2)
    alpha: float = Field(0.5, gt=0)  # Dirichlet concentration of the class split
    public_fraction: float = Field(0.3, gt=0, lt=1)  # of the training split, labels dropped
    local_val_fraction: float = Field(0.15, ge=0, lt=1)  # each client's own validation rows
    rounds: int = Field(3, ge=1)
    temperature: float = Field(1.0, gt=0)  # of the consensus and the distillation
    local: TrainSettings = TrainSettings(epochs=20)  # first private training (and centralised)
    digest: TrainSettings = TrainSettings(epochs=5)  # clients: KD towards the consensus
    revisit: TrainSettings = TrainSettings(epochs=5)  # clients: private data again
    server_train: TrainSettings = TrainSettings(epochs=20)  # server: KD on the public set
    seed: int = 0


def load_federated_config(path: str | Path, overrides: list[str] = ()) -> FederatedConfig:
    return load_command_config(path, overrides, FederatedConfig, "federated config")


# ------------------------------------------------------------------- data split
def dirichlet_split(
    labels: np.ndarray, clients: int, alpha: float, seed: int, min_size: int = 10
) -> list[np.ndarray]:
    """Row indices per client: each class's rows dealt out by Dirichlet(alpha) proportions.
    Redrawn (up to 100 times) until every client holds at least `min_size` rows."""
    rng = np.random.default_rng(seed)
    for _ in range(100):
        parts: list[list[int]] = [[] for _ in range(clients)]
        for c in np.unique(labels):
            rows = rng.permutation(np.flatnonzero(labels == c))
            share = rng.dirichlet(np.full(clients, alpha))
            cuts = (np.cumsum(share)[:-1] * len(rows)).astype(int)
            for i, chunk in enumerate(np.split(rows, cuts)):
                parts[i] += chunk.tolist()
        if min(len(p) for p in parts) >= min_size:
            return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
    raise ConfigError(
        f"clients={clients}, alpha={alpha}: could not give every client {min_size} samples; "
        f"use fewer clients or a larger alpha"
    )


class SoftTargets(ArrayDataset):
    """Inputs with a target distribution per row (batch key 'soft'); targets are its argmax."""

    def __init__(self, inputs: Tensor, soft: Tensor):
        super().__init__(inputs, soft.argmax(-1))
        self.soft = soft

    def batch(self, index: Tensor) -> dict[str, Tensor]:
        return {**super().batch(index), "soft": self.soft[index]}


class SoftTargetKD(SchemeBase):
    """Distil towards given per-sample distributions (batch['soft']): T^2 KL(q || p_s^T)."""

    def __init__(self, student: nn.Module, temperature: float):
        from distill.objective import Objective

        super().__init__(student, Objective())
        self.temperature = temperature

    def step(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        kd = soft_kl(self.student(batch["input"]), batch["soft"], self.temperature)
        return {"loss": kd, "kd": kd}


# ------------------------------------------------------------------ participants
@dataclass
class Channel:
    """Everything sent between clients and server, in order: (sender, receiver, tensor)."""

    log: list[tuple[str, str, Tensor]] = field(default_factory=list)

    def send(self, sender: str, receiver: str, message: Tensor) -> Tensor:
        message = message.detach().clone()
        self.log.append((sender, receiver, message))
        return message


def _fit(scheme: Any, train: Any, val: Any, settings: TrainSettings, run_dir: Path) -> None:
    from distill.app.build import weights_path
    from distill.core import rundir
    from distill.loop.trainer import Trainer
    from distill.models.weights import restore_weights

    rundir.clear(run_dir)  # a round's run dir, inside the locked federated run dir
    Trainer(scheme, train, val, settings, run_dir=run_dir).fit()
    model = scheme.eval_model().cpu()  # (the trainer may have moved it to a GPU)
    restore_weights(model, weights_path(str(run_dir)), "model")


class Client:
    """One participant: its model and private data stay here; it answers with logits only."""

    def __init__(self, name: str, model: nn.Module, private: ArrayDataset, val: ArrayDataset):
        self.name, self.model = name, model
        self._private, self._val = private, val

    def train_private(self, settings: TrainSettings, run_dir: Path) -> None:
        from distill.schemes.supervised import Supervised

        _fit(Supervised(self.model), self._private, self._val, settings, run_dir)

    @torch.no_grad()
    def share(self, public_inputs: Tensor) -> Tensor:
        """The only thing a client sends: its logits on the public inputs."""
        from distill.evaluate import predict_logits

        return predict_logits(
            self.model, ArrayDataset(public_inputs, torch.zeros(len(public_inputs)))
        )

    def digest(
        self,
        public_inputs: Tensor,
        consensus: Tensor,
        settings: TrainSettings,
        t: float,
        run_dir: Path,
    ) -> None:
        scheme = SoftTargetKD(self.model, t)
        _fit(scheme, SoftTargets(public_inputs, consensus), self._val, settings, run_dir)


def consensus(messages: list[Tensor], temperature: float) -> Tensor:
    """The average of the clients' softmax at temperature T."""
    return torch.stack([F.softmax(m.float() / temperature, -1) for m in messages]).mean(0)


# ------------------------------------------------------------------------- running
def run_federated(
    cfg: FederatedConfig,
    *,
    overwrite: bool = False,
    progress: bool = True,
    source: Path | None = None,
) -> dict:
    """Simulate the protocol of the module docstring; write results.json and report.md.
    `overwrite` clears what an earlier run wrote (see distill.core.rundir)."""
    from distill.core import rundir

    run_dir = cfg.resolved_run_dir()
    rundir.check_location(run_dir)
    if overwrite:
        rundir.check_clearable(run_dir, source)
    elif (run_dir / "results.json").is_file():
        raise ConfigError(
            f"run dir {str(run_dir)!r} already holds a federated run; "
            + rundir.replace_advice(run_dir)
        )
    else:
        rundir.check_fresh(run_dir)
    with rundir.RunLock(run_dir):
        return _run_federated(cfg, run_dir, progress, overwrite, source)


def _partition(cfg: FederatedConfig, train: Any) -> tuple[np.ndarray, np.ndarray, list]:
    """The public rows (labels never read), the private rows, and each client's share of
    the private rows (indices into them, Dirichlet over classes)."""
    labelled = np.flatnonzero(train.targets.numpy() >= 0)
    shuffled = np.random.default_rng(cfg.seed).permutation(labelled)
    n_public = int(round(cfg.public_fraction * len(shuffled)))
    public_rows, private_rows = np.sort(shuffled[:n_public]), np.sort(shuffled[n_public:])
    splits = dirichlet_split(train.targets.numpy()[private_rows], cfg.clients, cfg.alpha, cfg.seed)
    return public_rows, private_rows, splits


def _make_clients(cfg: FederatedConfig, data: Any, private_rows: np.ndarray, splits: list):
    """One client per share: its model (seeded by its index) and its own train/val rows."""
    from distill.app.build import load_model

    train, clients = data.train, []
    for i, rows in enumerate(splits):
        rows = private_rows[rows]
        n_val = int(round(cfg.local_val_fraction * len(rows)))
        perm = np.random.default_rng(cfg.seed + 17 + i).permutation(rows)
        val_rows = perm[:n_val] if n_val else perm
        own = train.subset(np.sort(perm[n_val:]))
        torch.manual_seed(cfg.seed + i)
        model = load_model(cfg.client, data, "client")
        clients.append(Client(f"client{i}", model, own, train.subset(np.sort(val_rows))))
    return clients


def _round(cfg, r: int, clients, server, public_x, channel, run_dir: Path) -> None:
    """Round r: the clients share predictions on the public data, the server learns their
    consensus, sends it back, and each client digests it, then revisits its own data."""
    quiet = {"progress": False}
    messages = [channel.send(c.name, "server", c.share(public_x)) for c in clients]
    target = consensus(messages, cfg.temperature)
    pub = SoftTargets(public_x, target)
    server_settings = cfg.server_train.model_copy(update=quiet)
    _fit(SoftTargetKD(server, cfg.temperature), pub, pub, server_settings, run_dir / "server")
    for c in clients:
        back = channel.send("server", c.name, target)
        digest = cfg.digest.model_copy(update=quiet)
        c.digest(public_x, back, digest, cfg.temperature, run_dir / f"{c.name}-digest")
        revisit = cfg.revisit.model_copy(update=quiet)
        c.train_private(revisit, run_dir / f"{c.name}-revisit")


def _centralised(cfg: FederatedConfig, data: Any, pooled: Any, settings, run_dir: Path):
    """The reference no federated run can beat: one client model on all private data."""
    from distill.app.build import load_model
    from distill.schemes.supervised import Supervised

    torch.manual_seed(cfg.seed)
    central = load_model(cfg.client, data, "client")
    _fit(Supervised(central), pooled, data.val, settings, run_dir / "centralised")
    return central


def _run_federated(
    cfg: FederatedConfig, run_dir: Path, progress: bool, overwrite: bool, source: Path | None
) -> dict:
    from distill.app.build import load_data, load_model
    from distill.core import rundir
    from distill.core.checkpoint import atomic_write_text
    from distill.evaluate import predict_logits

    data = load_data(cfg.data)
    train = data.train
    if not hasattr(train, "inputs"):
        raise ConfigError("distill federated needs an in-memory array dataset")
    public_rows, private_rows, splits = _partition(cfg, train)
    y_private = train.targets.numpy()[private_rows]
    rundir.begin(run_dir, "federated", overwrite=overwrite, source=source)  # (data loaded)

    def test_acc(model: nn.Module) -> float:
        logits = predict_logits(model, data.test)
        return float((logits.argmax(-1) == data.test.targets).float().mean())

    def say(msg: str) -> None:
        print(msg, file=sys.stderr) if progress else None

    local = cfg.local.model_copy(update={"progress": False})
    clients = _make_clients(cfg, data, private_rows, splits)
    say(f"{cfg.clients} clients, private {[len(s) for s in splits]}, public {len(public_rows)}")
    for c in clients:
        c.train_private(local, run_dir / "round0" / c.name)
    history = [{"round": 0, "clients_test_acc": [test_acc(c.model) for c in clients]}]
    history[0]["server_test_acc"] = None  # (no server yet)
    say(f"round 0: clients {np.round(history[0]['clients_test_acc'], 3).tolist()}")
    channel = Channel()
    server = load_model(cfg.server or cfg.client, data, "server")
    for r in range(1, cfg.rounds + 1):
        _round(cfg, r, clients, server, train.inputs[public_rows], channel, run_dir / f"round{r}")
        row = {"round": r, "clients_test_acc": [test_acc(c.model) for c in clients]}
        row["server_test_acc"] = test_acc(server)
        history.append(row)
        clients_acc = np.round(row["clients_test_acc"], 3).tolist()
        say(f"round {r}: server {row['server_test_acc']:.3f}, clients {clients_acc}")
    central = _centralised(cfg, data, train.subset(private_rows), local, run_dir)
    result = {
        "name": cfg.name,
        "run_dir": str(run_dir),
        "clients": cfg.clients,
        "alpha": cfg.alpha,
        "public_samples": len(public_rows),
        "private_sizes": [len(s) for s in splits],
        "class_counts": [
            np.bincount(y_private[s], minlength=data.num_classes).tolist() for s in splits
        ],
        "history": history,
        "centralised_test_acc": test_acc(central),
        "messages": len(channel.log),
        "message_shapes": sorted({tuple(m.shape) for _, _, m in channel.log}),
    }
    atomic_write_text(run_dir / "results.json", json.dumps(result, indent=2))
    atomic_write_text(run_dir / "report.md", markdown(cfg.name, result))
    result["channel"] = channel
    return result


def markdown(name: str, result: dict[str, Any]) -> str:
    out = [
        f"# {name}",
        "",
        f"{result['clients']} clients, Dirichlet alpha {result['alpha']}, private sizes "
        f"{result['private_sizes']}, public transfer set {result['public_samples']} "
        f"(unlabelled).",
        "",
        "| round | server test acc | client mean | best client | worst client |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for row in result["history"]:
        accs = row["clients_test_acc"]
        server = "-" if row["server_test_acc"] is None else f"{100 * row['server_test_acc']:.1f}"
        out.append(
            f"| {row['round']} | {server} | {100 * sum(accs) / len(accs):.1f} | "
            f"{100 * max(accs):.1f} | {100 * min(accs):.1f} |"
        )
    out += ["", f"Centralised (pooled private data): {100 * result['centralised_test_acc']:.1f}"]
    return "\n".join(out) + "\n"


__all__ = [
    "Channel",
    "Client",
    "FederatedConfig",
    "SoftTargetKD",
    "SoftTargets",
    "consensus",
    "dirichlet_split",
    "load_federated_config",
    "run_federated",
]
