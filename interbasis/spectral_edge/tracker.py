"""Training callback that tracks the spectral edge of the parameter updates (seed 003).

Every ``every`` optimizer steps the tracker snapshots θ_tracked; the update is the
difference of consecutive snapshots, ``Δθ_t = θ_{t} − θ_{t−every}`` (not normalised). The
last ``window`` updates are kept in a ring buffer (memory 2·W·n float64: the update and its
weight-decay part) and, once the buffer is full, their SVD (:func:`window_spectrum`) gives
σ_1 ≥ σ_2 ≥ …, the gap ratios σ_j/σ_{j+1}, k*, g_23 and the edge directions.

AdamW split. AdamW's step is ``θ ← θ − lr·wd·θ − lr·m̂/(√v̂ + eps)``; ``on_before_step``
sees θ before the step, so the decoupled weight-decay part ``−lr·wd·θ`` is accumulated
exactly and the gradient (Adam) part is the rest of the update. Optimizers whose weight decay
is an L2 term in the gradient (SGD, Adam without ``decoupled_weight_decay``) have no separate
part: their weight decay counts as gradient.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from interbasis.callbacks import Callback
from interbasis.errors import DataError, FormatError
from interbasis.spectral_edge.parameters import (
    ATTENTION_WEIGHTS,
    ParamFilter,
    ParamLayout,
    check_model,
    flatten_params,
    select_parameters,
)
from interbasis.spectral_edge.window import WindowSpectrum, edge_energy_shares, window_spectrum

_HISTORY_KEYS = ("step", "sigma", "gap_ratio", "k_star", "g23", "edge_energy", "grad_share")


class SpectralEdgeTracker(Callback):
    """Rolling-window SVD of parameter updates during training.

    Parameters
    ----------
    params : str, sequence of str, or callable
        Which parameters to track (see :func:`select_parameters`); default the attention
        weights W_Q, W_K, W_V, W_O of every block.
    every : int
        Snapshot interval in optimizer steps (seed: 100).
    window : int
        Number of updates W in the window (functional-modes paper: 20; thesis: 10); ≥ 2.
    center : bool
        Subtract the window's mean update before the SVD (functional-modes paper: True;
        thesis: False).
    n_edge : int
        Size of the edge used for the energy split and ``edge()`` (seed: 3).
    n_record : int
        Number of σ's (and directions at grokking) kept in the history.
    grok_metric, grok_threshold : str, float
        Grokking = first evaluation with ``metrics[grok_metric] >= grok_threshold``.
    min_updates : int, optional
        History starts once the window holds this many updates (default: ``window``, i.e.
        only full windows; smaller values add early, shorter windows).

    Attributes
    ----------
    grok_step : int or None
    grok_spectrum : WindowSpectrum or None
        The window's spectrum at the grokking evaluation (top ``n_record`` directions).
    """

    def __init__(
        self,
        params: ParamFilter = ATTENTION_WEIGHTS,
        *,
        every: int = 100,
        window: int = 20,
        center: bool = True,
        n_edge: int = 3,
        n_record: int = 8,
        grok_metric: str = "test_acc",
        grok_threshold: float = 0.95,
        min_updates: int | None = None,
    ) -> None:
        if int(window) < 2:
            raise DataError(f"window must be >= 2 updates, got window={window}")
        if int(every) < 1:
            raise DataError(f"every must be >= 1 optimizer step, got every={every}")
        if int(n_edge) < 1:
            raise DataError(f"n_edge must be >= 1, got n_edge={n_edge}")
        min_updates = window if min_updates is None else int(min_updates)
        if not 2 <= min_updates <= int(window):
            raise DataError(f"min_updates must be in 2..window={window}, got {min_updates}")
        self.min_updates = min_updates
        if int(n_record) < max(3, int(n_edge)):
            raise DataError(f"n_record must be >= max(3, n_edge), got n_record={n_record}")
        self.params = params
        self.every, self.window, self.center = int(every), int(window), bool(center)
        self.n_edge, self.n_record = int(n_edge), int(n_record)
        self.grok_metric, self.grok_threshold = grok_metric, float(grok_threshold)
        self.layout: ParamLayout | None = None
        self.grok_step: int | None = None
        self.grok_spectrum: WindowSpectrum | None = None
        self._reset_buffers()
        self._history: dict[str, list[Any]] = {k: [] for k in _HISTORY_KEYS}
        self._evals: list[tuple[int, float]] = []
        self._slices: list[tuple[torch.nn.Parameter, slice, dict[str, Any], bool]] = []
        self._before_step: int | None = None

    # ------------------------------------------------------------------ buffers
    def _reset_buffers(self) -> None:
        self._snapshot: torch.Tensor | None = None
        self._wd_acc: torch.Tensor | None = None
        self._acc_valid = True
        self._updates: torch.Tensor | None = None  # (W, n) ring buffer
        self._wd_parts: torch.Tensor | None = None  # (W, n) ring buffer
        self._valid = np.zeros(self.window, dtype=bool)
        self._steps = np.zeros(self.window, dtype=np.int64)
        self._count = 0  # updates pushed so far

    def _ordered(self, buf: torch.Tensor) -> torch.Tensor:
        m = min(self._count, self.window)
        start = self._count % self.window if self._count >= self.window else 0
        idx = [(start + i) % self.window for i in range(m)]
        return buf[idx]

    @property
    def n_updates(self) -> int:
        """Number of updates currently in the window (at most ``window``)."""
        return min(self._count, self.window)

    def window_updates(self) -> torch.Tensor:
        """The updates in the window, oldest first, shape (m, n), float64."""
        if self._updates is None or self._count == 0:
            raise DataError("no update recorded yet: the first comes after `every` steps")
        return self._ordered(self._updates)

    def window_parts(self) -> dict[str, torch.Tensor]:
        """The window split into ``{"gradient": (m, n), "weight_decay": (m, n)}``."""
        total = self.window_updates()
        assert self._wd_parts is not None
        wd = self._ordered(self._wd_parts)
        return {"gradient": total - wd, "weight_decay": wd}

    def spectrum(self) -> WindowSpectrum:
        """SVD of the current window (may hold fewer than ``window`` updates, at least 2)."""
        return window_spectrum(self.window_updates(), center=self.center)

    def edge(self, k: int | None = None) -> torch.Tensor:
        """Top-k right singular vectors of the current window, shape (k, n), float64."""
        k = self.n_edge if k is None else int(k)
        return self.spectrum().directions[:k]

    # ------------------------------------------------------------------ callback hooks
    def on_train_begin(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Select the tracked parameters, read the optimizer's groups, snapshot ``θ``."""
        if self.layout is None:
            self.layout = select_parameters(model, self.params)
        check_model(self.layout, model)
        named = dict(model.named_parameters())
        groups = {id(p): g for g in optimizer.param_groups for p in g["params"]}
        self._slices = []
        offset = 0
        for name, size in zip(self.layout.names, self.layout.numels, strict=True):
            p = named[name]
            group = groups.get(id(p), {"lr": 0.0, "weight_decay": 0.0})
            decoupled = isinstance(optimizer, torch.optim.AdamW) or bool(
                group.get("decoupled_weight_decay", False)
            )
            self._slices.append((p, slice(offset, offset + size), group, decoupled))
            offset += size
        if self._snapshot is None:
            self._snapshot = flatten_params(model, self.layout)
            self._wd_acc = torch.zeros_like(self._snapshot)
        else:
            device = next(iter(named.values())).device
            self._to(device)

    def on_before_step(
        self,
        step: int,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        batch: tuple[torch.Tensor, ...],
    ) -> None:
        """Accumulate the decoupled weight-decay part ``-lr · wd · θ`` of the coming update."""
        assert self._wd_acc is not None, "on_train_begin was not called"
        with torch.no_grad():
            for p, sl, group, decoupled in self._slices:
                wd, lr = float(group.get("weight_decay", 0.0)), float(group["lr"])
                if decoupled and wd != 0.0:
                    self._wd_acc[sl] -= lr * wd * p.detach().reshape(-1).to(torch.float64)
        self._before_step = step

    def on_step(
        self,
        step: int,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        batch: tuple[torch.Tensor, ...],
    ) -> None:
        """Every ``every`` steps, push the update ``θ - θ_prev`` into the window and record."""
        assert self.layout is not None and self._snapshot is not None, (
            "on_train_begin was not called"
        )
        if self._before_step != step:  # the weight-decay part of this step was not seen
            self._acc_valid = False
        self._before_step = None
        if step % self.every != 0:
            return
        theta = flatten_params(model, self.layout)  # checks shapes
        self._push(step, theta - self._snapshot, self._wd_acc, self._acc_valid)
        self._snapshot = theta
        assert self._wd_acc is not None
        self._wd_acc.zero_()
        self._acc_valid = True
        if self._count >= self.min_updates:
            self._record(step)

    def on_eval(self, step: int, model: torch.nn.Module, metrics: dict[str, Any]) -> None:
        """Note ``grok_metric``; at its first crossing of ``grok_threshold`` keep the spectrum."""
        value = metrics.get(self.grok_metric)
        if value is None:
            return
        self._evals.append((int(step), float(value)))
        if self.grok_step is None and float(value) >= self.grok_threshold:
            self.grok_step = int(step)
            if self._count >= 2:
                s = self.spectrum()
                self.grok_spectrum = WindowSpectrum(
                    s.sigma, s.directions[: self.n_record].clone(), s.rank
                )

    # ------------------------------------------------------------------ internals
    def _push(self, step: int, update: torch.Tensor, wd: Any, valid: bool) -> None:
        if self._updates is None:
            n = update.shape[0]
            self._updates = update.new_zeros(self.window, n)
            self._wd_parts = update.new_zeros(self.window, n)
        assert self._wd_parts is not None
        i = self._count % self.window
        self._updates[i] = update
        self._wd_parts[i] = wd
        self._valid[i], self._steps[i] = valid, step
        self._count += 1

    def _record(self, step: int) -> None:
        s = self.spectrum()
        k = self.n_record
        sigma = np.full(k, np.nan)  # σ beyond the numerical rank are round-off: NaN
        sigma[: min(k, s.rank)] = s.sigma[: min(k, s.rank)]
        gaps = np.full(k - 1, np.nan)
        r = s.gap_ratios[: k - 1]
        gaps[: r.size] = r
        share = float("nan")
        if self._valid[: self.n_updates].all():  # slots fill in order 0, 1, ...
            share = edge_energy_shares(s, self.window_parts(), self.n_edge, self.center)["gradient"]
        row = (step, sigma, gaps, s.k_star, s.g23, s.energy_fraction(self.n_edge), share)
        for key, value in zip(_HISTORY_KEYS, row, strict=True):
            self._history[key].append(value)

    def _to(self, device: torch.device) -> None:
        for attr in ("_snapshot", "_wd_acc", "_updates", "_wd_parts"):
            t = getattr(self, attr)
            if t is not None:
                setattr(self, attr, t.to(device))

    # ------------------------------------------------------------------ results
    @property
    def history(self) -> dict[str, np.ndarray]:
        """Arrays with one entry per recorded snapshot (window holds ≥ ``min_updates``).

        ``step`` (T,), ``sigma`` (T, n_record), ``gap_ratio`` (T, n_record−1), ``k_star``
        (T,), ``g23`` (T,), ``edge_energy`` (T,) = share of the window energy in the top
        ``n_edge``, ``grad_share`` (T,) = gradient share of the edge energy
        (:func:`edge_energy_shares`; NaN where a step's split was not seen), plus
        ``eval_step`` / ``eval_value`` for the grokking metric.
        """
        out: dict[str, np.ndarray] = {}
        for key in _HISTORY_KEYS:
            values = self._history[key]
            if key in ("sigma", "gap_ratio"):
                width = self.n_record - (key == "gap_ratio")
                out[key] = np.array(values, dtype=np.float64).reshape(len(values), width)
            else:
                out[key] = np.asarray(
                    values, dtype=np.int64 if key in ("step", "k_star") else np.float64
                )
        out["eval_step"] = np.array([s for s, _ in self._evals], dtype=np.int64)
        out["eval_value"] = np.array([v for _, v in self._evals], dtype=np.float64)
        return out

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: layout, snapshot, partial weight-decay sum, buffers,
        history and grokking record (tensors on CPU)."""

        def cpu(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.detach().cpu().clone()

        gs = self.grok_spectrum
        return {
            "version": 1,
            "config": {"every": self.every, "window": self.window, "center": self.center},
            "layout": None
            if self.layout is None
            else {
                "names": list(self.layout.names),
                "shapes": [list(s) for s in self.layout.shapes],
            },
            "snapshot": cpu(self._snapshot),
            "wd_acc": cpu(self._wd_acc),
            "acc_valid": self._acc_valid,
            "updates": cpu(self._updates),
            "wd_parts": cpu(self._wd_parts),
            "valid": self._valid.copy(),
            "steps": self._steps.copy(),
            "count": self._count,
            "history": {k: list(v) for k, v in self._history.items()},
            "evals": list(self._evals),
            "grok_step": self.grok_step,
            "grok_spectrum": None
            if gs is None
            else {"sigma": gs.sigma.copy(), "directions": cpu(gs.directions), "rank": gs.rank},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output; the model is checked in ``on_train_begin``."""
        if state.get("version") != 1:
            raise FormatError(f"unknown SpectralEdgeTracker state version {state.get('version')!r}")
        cfg = state["config"]
        mine = {"every": self.every, "window": self.window, "center": self.center}
        if cfg != mine:
            raise DataError(f"state was saved with {cfg}, this tracker has {mine}")
        lay = state["layout"]
        self.layout = (
            None
            if lay is None
            else ParamLayout(tuple(lay["names"]), tuple(torch.Size(s) for s in lay["shapes"]))
        )
        self._snapshot, self._wd_acc = state["snapshot"], state["wd_acc"]
        self._acc_valid = bool(state["acc_valid"])
        self._updates, self._wd_parts = state["updates"], state["wd_parts"]
        self._valid = np.array(state["valid"], dtype=bool)
        self._steps = np.array(state["steps"], dtype=np.int64)
        self._count = int(state["count"])
        self._history = {k: list(state["history"][k]) for k in _HISTORY_KEYS}
        self._evals = [tuple(e) for e in state["evals"]]
        self.grok_step = state["grok_step"]
        gs = state["grok_spectrum"]
        self.grok_spectrum = (
            None
            if gs is None
            else WindowSpectrum(np.asarray(gs["sigma"]), gs["directions"], int(gs["rank"]))
        )
