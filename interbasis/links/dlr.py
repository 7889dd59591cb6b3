"""D_LR ↔ graph: which layers and modules carry features in the span of the outputs.

Seed 001 measures richness by ``D_LR = 1 - CKA(Φ Φ^T, F F^T)`` (eq. 4, appendix E.1; see
:func:`interbasis.richness.d_lr`) with ``Φ`` the penultimate features and ``F`` the outputs.
Here ``Φ`` is replaced by interaction-basis features:

- per node layer ``L``: ``Φ = f_hat^L`` (all non-constant nodes), next to ``Φ = f^L`` (the
  neurons; equal to the PCA-basis value, since CKA ignores centring and orthogonal maps);
- per module ``m``: ``Φ`` = the functions of the module's nodes alone, across its layers
  (the output layer left out: its nodes *are* ``F``), and per (module, layer).

A small D_LR means the features are (up to CKA's isotropic scaling and rotations) the
outputs themselves. For a layer with positions the features of all positions are
concatenated, ``Φ = (N, pos · n)`` (the layer's whole state; before attention the readout
position alone is the same for every input). The constant node is left out everywhere (CKA
centres anyway); features that are constant on the data give NaN (CKA is undefined).

A model in train mode follows :mod:`interbasis.train_mode` (``train_mode="eval"``, default: the
eval-mode function of a float64 copy, with a warning; ``"error"``: refused; ``"keep"``: the copy
stays in train mode); the model, its mode and its buffers never change.

Distributed (``process_group``; default: the initialised default group, if any): each rank
runs the forward passes of its shard of the batches and the activations are all-gathered in
sample order (:func:`interbasis.distributed_ops.gather_batches`, as D_LR's features in
:mod:`interbasis.richness.tracker`), so every rank computes the same D_LR as one process.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from interbasis.basis import Basis
from interbasis.capture import OUTPUT, capture, resolve_node_layers
from interbasis.data import iter_batches
from interbasis.distributed_ops import check_same_data, data_shard, gather_batches
from interbasis.errors import DataError, RankError
from interbasis.links.jvp import float64_copy
from interbasis.richness import d_lr
from interbasis.train_mode import TrainMode

Mode = Literal["gram", "projection"]


@torch.no_grad()
def layer_activations(
    model: nn.Module,
    data: Any,
    names: Sequence[str],
    *,
    batch_size: int | None = None,
    train_mode: TrainMode = "eval",
    process_group: Any = None,
) -> dict[str, torch.Tensor]:
    """``name -> f^L`` ``(N, [pos], d)`` float64 for ``names`` plus ``"output"``.

    ``train_mode``: the policy for a model in train mode (module docstring).
    ``process_group``: default the initialised default group, if any; every rank passes the
    whole ``data``, captures its shard of the batches, and the activations of all ranks are
    all-gathered in sample order (the same ``(N, [pos], d)`` tensors on every rank).
    """
    shard = data_shard(process_group, "layer_activations")
    net = float64_copy(model, train_mode, "layer activations")
    wanted = [n for n in names if n != OUTPUT] + [OUTPUT]
    modules = resolve_node_layers(net, wanted)
    parts: dict[str, list[tuple[int, torch.Tensor]]] = {n: [] for n in wanted}
    n_batches = 0
    with shard.stage("layer activations"):  # a rank that raises stops every rank
        for b, x in enumerate(iter_batches(data, batch_size, torch.device("cpu"), torch.float64)):
            n_batches += 1
            if b % shard.world != shard.rank:  # the batches of the other ranks
                continue
            acts, _ = capture(net, x, modules)
            for n in wanted:
                parts[n].append((b, acts[n].to(torch.float64)))
    check_same_data(shard, [n_batches], "layer_activations data")
    return {
        n: torch.cat(gather_batches(shard, p, f"activations of {n!r}")) for n, p in parts.items()
    }


def _flat(t: torch.Tensor) -> torch.Tensor:
    """``(N, [pos], d) -> (N, pos * d)``: all positions' features side by side."""
    return t.reshape(t.shape[0], -1)


def _d_lr(phi: torch.Tensor, F: torch.Tensor, mode: Mode) -> float:
    try:
        return d_lr(phi, F, mode=mode)
    except RankError:  # constant features: CKA undefined
        return float("nan")


@dataclass(frozen=True)
class GraphDLR:
    """D_LR of layers and modules (module docstring); all values in [0, 1].

    Attributes
    ----------
    mode : ``"gram"`` or ``"projection"`` (:func:`interbasis.richness.d_lr`).
    layers : node layer -> D_LR with ``Φ`` = its non-constant nodes.
    neurons : node layer -> D_LR with ``Φ`` = its activations.
    modules : module id -> D_LR with ``Φ`` = its nodes (output layer excluded).
    module_layers : ``(module id, layer)`` -> D_LR of the module's nodes in that layer.
    module_sizes : module id -> number of nodes used.
    """

    mode: str
    layers: dict[str, float]
    neurons: dict[str, float]
    modules: dict[int, float] = field(default_factory=dict)
    module_layers: dict[tuple[int, str], float] = field(default_factory=dict)
    module_sizes: dict[int, int] = field(default_factory=dict)


def graph_dlr(
    model: nn.Module,
    data: Any,
    bases: Sequence[Basis],
    membership: Mapping[str, int] | None = None,
    *,
    mode: Mode = "gram",
    batch_size: int | None = None,
    train_mode: TrainMode = "eval",
    process_group: Any = None,
) -> GraphDLR:
    """D_LR with ``Φ`` = interaction-basis features of each layer and module.

    Parameters
    ----------
    model, data : the network and its inputs (``N >= 2`` samples).
    bases : bases of the node layers (any kind: interaction, PCA or neuron).
    membership : node id -> module id (``graphs.Partition.membership``); optional.
    mode : passed to :func:`interbasis.richness.d_lr`.
    train_mode : the policy for a model in train mode (module docstring).
    process_group : default the initialised default group, if any: the activations are
        computed on each rank's shard of the batches and all-gathered (module docstring);
        every rank returns the same result.

    Raises
    ------
    DataError, RankError, ShapeError
        From :func:`interbasis.richness.d_lr` (e.g. fewer than two samples, constant outputs);
        DataError also for an unknown ``mode`` or ``train_mode``, a train-mode model with
        ``train_mode="error"``.
    """
    names = [b.name for b in bases if b.name != OUTPUT]
    if not names:
        raise DataError("graph_dlr needs at least one node layer besides 'output'")
    if mode not in ("gram", "projection"):
        raise DataError(f"mode must be 'gram' or 'projection', got {mode!r}")
    acts = layer_activations(
        model, data, names, batch_size=batch_size, train_mode=train_mode,
        process_group=process_group,
    )  # fmt: skip
    F = acts[OUTPUT].reshape(acts[OUTPUT].shape[0], -1)
    feats: dict[str, torch.Tensor] = {}
    layers, neurons = {}, {}
    for b in bases:
        if b.name == OUTPUT:
            continue
        f_hat = b.transform(acts[b.name])
        feats[b.name] = _flat(f_hat[..., 1:] if b.has_constant else f_hat)
        layers[b.name] = _d_lr(feats[b.name], F, mode)
        neurons[b.name] = _d_lr(_flat(acts[b.name]), F, mode)
    out = GraphDLR(mode, layers, neurons)
    if membership is None:
        return out
    columns: dict[int, list[torch.Tensor]] = {}
    for b in bases:
        if b.name == OUTPUT:
            continue
        offset = 1 if b.has_constant else 0
        n = b.n_nodes - offset
        ids = torch.tensor([membership.get(f"{b.name}:{i + offset}", -1) for i in range(n)])
        ids = ids.repeat(feats[b.name].shape[1] // n)  # the same node at every position
        for m in sorted({int(i) for i in ids.tolist() if i >= 0}):
            cols = feats[b.name][:, ids == m]
            out.module_layers[(m, b.name)] = _d_lr(cols, F, mode)
            columns.setdefault(m, []).append(cols)
    for m, parts in sorted(columns.items()):
        phi = torch.cat(parts, dim=1)
        out.modules[m] = _d_lr(phi, F, mode)
        out.module_sizes[m] = int(phi.shape[1])
    return out
