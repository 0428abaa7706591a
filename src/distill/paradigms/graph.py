"""Graph-based distillation: node classification on a k-nearest-neighbour graph.

The graph: every sample of a real dataset (train and test together, transductively, as in
citation graphs) is a node, joined to its `k` nearest neighbours in feature space. A node's
model input is its two-hop computation tree, laid out as rows of features:

    row 0                  the node itself
    rows 1 .. k            its k neighbours
    rows 1+k+j*k .. +k     the k neighbours of neighbour j

This is how sampled GNN mini-batching (GraphSAGE, Hamilton et al. 2017) feeds a two-layer
GNN, and it is exact here because every node of a kNN graph has exactly k neighbours. So the
one training loop, the teacher cache and every evaluation work on graphs unchanged.

Models (in the model table):

- `gnn`: two message-passing layers (GraphSAGE-mean, or GCN-style shared weights) and a head;
- `node_mlp`: a graph-free MLP student (GLNN, Zhang et al. 2022). At inference it reads only
  the node's own features (row 0, or a plain (N, D) feature matrix); during training its
  per-row embeddings of the first-hop rows let structure losses (LSP) compare it with a GNN.

Tap names shared by both, for structure-preserving terms: `embed` gives (B, 1+k, H) — the
node and its neighbours after one layer — and `hidden` gives (B, H) for the node.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.core.errors import ConfigError


def nearest(x: Tensor, k: int, metric: str = "euclidean", chunk: int = 2048) -> Tensor:
    """(N, k) indices of each row's k nearest other rows (self excluded), nearest first,
    on flattened rows; distances are computed `chunk` rows at a time."""
    if not 1 <= k < len(x):
        raise ConfigError(f"k nearest neighbours needs 1 <= k < {len(x)} rows, got k={k}")
    z = x.reshape(len(x), -1).float()
    if metric == "cosine":
        z = F.normalize(z - z.mean(0), dim=1)
    elif metric != "euclidean":
        raise ConfigError(f"neighbour metric must be 'cosine' or 'euclidean', got {metric!r}")
    out = torch.empty(len(z), k, dtype=torch.long)
    for start in range(0, len(z), chunk):
        rows = torch.arange(start, min(start + chunk, len(z)))
        block = z[rows]
        dist = -(block @ z.t()) if metric == "cosine" else torch.cdist(block, z)
        dist[torch.arange(len(rows)), rows] = float("inf")
        out[rows] = dist.topk(k, dim=1, largest=False).indices
    return out


def knn_graph(x: np.ndarray, k: int, metric: str = "cosine") -> np.ndarray:
    """(N, k) neighbour indices of a kNN graph over the rows of `x` (see `nearest`)."""
    return nearest(torch.as_tensor(np.asarray(x, dtype=np.float32)), k, metric).numpy()


def ego_trees(x: np.ndarray, neighbours: np.ndarray) -> np.ndarray:
    """(N, 1 + k + k*k, D) two-hop computation trees in the layout of the module docstring."""
    flat = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
    n, k = neighbours.shape
    hop1 = neighbours  # (N, k)
    hop2 = neighbours[hop1].reshape(n, k * k)  # (N, k*k), grouped by first-hop neighbour
    rows = np.concatenate([np.arange(n)[:, None], hop1, hop2], axis=1)
    return flat[rows]


def fanout(rows: int) -> int:
    """k such that 1 + k + k^2 == rows (the layout of `ego_trees`)."""
    k = int(round((-1 + math.sqrt(4 * rows - 3)) / 2))
    if k < 1 or 1 + k + k * k != rows:
        raise ConfigError(
            f"graph models read two-hop trees of 1 + k + k^2 rows; input has {rows} rows. "
            f"Use data name 'graph' (distill.paradigms.graph) or give (N, D) node features"
        )
    return k


def load_graph(
    *, base: str = "digits", k: int = 8, metric: str = "cosine", **base_options: object
) -> object:
    """A kNN graph over a real dataset's samples, each node given as its two-hop tree.

    `base` is any array dataset of the table (digits, mnist1d, ...); the graph joins train and
    test nodes (transductive), the labels stay with their split."""
    from distill.core.registry import lookup
    from distill.data.raw import RawData
    from distill.data.sources import DATASETS, as_raw

    if base == "graph":
        raise ConfigError("data.options.base: a graph needs a feature dataset, not 'graph'")
    raw = as_raw(lookup("dataset", base, DATASETS)(**base_options), base)
    x_tr, x_te = np.asarray(raw.train[0]), np.asarray(raw.test[0])
    x = np.concatenate([x_tr.reshape(len(x_tr), -1), x_te.reshape(len(x_te), -1)])
    trees = ego_trees(x, knn_graph(x, k, metric))
    n = len(x_tr)
    return RawData(
        f"graph-{base}",
        (trees[:n], raw.train[1]),
        (trees[n:], raw.test[1]),
        tuple(trees.shape[1:]),
    )


def _children(h: Tensor, k: int) -> Tensor:
    """Mean over each first-level node's children: (B, k + k*k, H) -> (B, 1 + k, H).

    Row 0's children are rows 1..k; first-hop node j's are rows 1+k+j*k .. 1+k+(j+1)*k."""
    b, _, d = h.shape
    first = h[:, :k].mean(1, keepdim=True)  # children of the centre
    second = h[:, k : k + k * k].reshape(b, k, k, d).mean(2)  # children of each neighbour
    return torch.cat([first, second], 1)


class MessagePassing(nn.Module):
    """One GNN layer on computation-tree rows: h_v' = act(W_self h_v + W_nbr mean_u h_u)
    (GraphSAGE-mean), or act(W mean(h_v, h_u...)) with shared weights (GCN-style)."""

    def __init__(self, d_in: int, d_out: int, kind: str):
        super().__init__()
        if kind not in ("sage", "gcn"):
            raise ConfigError(f"gnn kind must be 'sage' or 'gcn', got {kind!r}")
        self.kind = kind
        self.self_proj = nn.Linear(d_in, d_out)
        self.nbr_proj = nn.Linear(d_in, d_out, bias=False) if kind == "sage" else None

    def forward(self, nodes: Tensor, mean_children: Tensor, k: int) -> Tensor:
        if self.nbr_proj is None:  # GCN: the node counts as one of k + 1 equal members
            return self.self_proj((nodes + k * mean_children) / (k + 1))
        return self.self_proj(nodes) + self.nbr_proj(mean_children)


class GNN(nn.Module):
    """Two message-passing layers over a node's two-hop tree, then a linear head."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        *,
        hidden: int = 64,
        kind: str = "sage",
        dropout: float = 0.0,
    ):
        super().__init__()
        if len(input_shape) != 2:
            raise ConfigError(
                f"gnn reads (rows, features) trees; got input shape {tuple(input_shape)}"
            )
        self.k = fanout(int(input_shape[0]))
        d = int(input_shape[1])
        self.conv1 = MessagePassing(d, hidden, kind)
        self.embed = nn.Sequential(nn.ReLU(), nn.Dropout(dropout))
        self.conv2 = MessagePassing(hidden, hidden, kind)
        self.hidden = nn.Sequential(nn.ReLU(), nn.Dropout(dropout))
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        k = self.k
        level01 = x[:, : 1 + k]
        h1 = self.embed(self.conv1(level01, _children(x[:, 1:], k), k))  # (B, 1+k, H)
        h2 = self.hidden(self.conv2(h1[:, 0], h1[:, 1:].mean(1), k))  # (B, H)
        return self.head(h2)


class NodeMLP(nn.Module):
    """A graph-free student: the same MLP on each row; predicts from the node's own row.

    Input (N, D) node features, or (N, rows, D) trees of which only row 0 affects the output
    (rows 1..k are embedded too, for structure losses during training)."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        *,
        hidden: int = 64,
        dropout: float = 0.0,
    ):
        super().__init__()
        shape = tuple(int(s) for s in input_shape)
        self.k = fanout(shape[0]) if len(shape) == 2 and shape[0] > 1 else 0
        d = shape[-1] if len(shape) == 2 else math.prod(shape)
        self.embed = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.hidden = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 3 and self.k:
            h = self.embed(x[:, : 1 + self.k])[:, 0]  # embeds rows 0..k, reads row 0
        else:
            h = self.embed(x.flatten(1) if x.dim() != 2 else x)
        return self.head(self.hidden(h))


__all__ = ["GNN", "NodeMLP", "ego_trees", "fanout", "knn_graph", "load_graph", "nearest"]
