"""Gate patterns of ReLU-like layers, streamed into float64 sufficient statistics.

For a layer with pre-activations ``p`` and activations ``f = relu(p)`` (or a leaky ReLU),
the firing pattern of seed 004 eq. 17 is ``r_i(x) = f_i(x) / p_i(x)`` (``1`` where
``p_i(x) = 0``); for ReLU it is the gate ``on_i(x) = [p_i(x) >= 0]``. Everything the
synchronisation analysis needs is a handful of ``(d, d)`` matrix products of the per-batch
``(n, d)`` matrices ``p``, ``f`` and ``on``, so memory does not grow with the data and there is
no loop over samples:

- ``co_on = on^T on`` (co-firing counts; exact integers in float64 up to 2^53 samples), whose
  Hamming distances ``c_i + c_j - 2 co_on_ij`` detect identical patterns exactly;
- the uncentred Gram of ``[p, 1]`` (block ranks, eq. 21) and of ``f`` (eq. 20 as printed);
- ``(p^2)^T on`` and ``(on * p^2)^T on``, from which the scale-invariant near-synchrony measure
  (:mod:`.sync`) follows.

Positions (transformers) are pooled as samples (DESIGN §4).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

import torch
from torch import nn

from interbasis.errors import DataError, NodeLayerError, NonFiniteError

Where = Literal["input", "output"]
#: Agreement required between ``f`` and ``max(p, 0)`` / ``slope * p``: the forward pass runs
#: in float64, where both are exact to a few ulp; 1e-6 also admits float32 leaky-ReLU products.
RELU_RTOL = 1e-6


class GateStats:
    """Streaming gate statistics of one ReLU-like layer of width ``d`` (float64).

    Attributes
    ----------
    name : the layer (module receiving the pre-activations).
    count : number of samples (positions pooled).
    on_count : (d,) samples on which each gate is on.
    co_on : (d, d) co-firing counts ``on^T on``.
    pre_gram : (d+1, d+1) ``sum [p, 1]^T [p, 1]`` (constant last, unnormalised).
    post_gram : (d, d) ``sum f^T f``.
    p2_on : (d, d) ``sum_x p_i(x)^2 on_j(x)``.
    p2_on_on : (d, d) ``sum_x p_i(x)^2 on_i(x) on_j(x)``.
    nonzero : (d,) samples on which ``f_i != 0``.
    slope : negative-side slope seen so far (0 for ReLU), ``nan`` before any ``p < 0``.
    """

    def __init__(self, name: str, width: int, device: torch.device | str = "cpu") -> None:
        self.name = name
        self.width = width
        self.count = 0

        def zeros(*shape: int) -> torch.Tensor:
            return torch.zeros(*shape, dtype=torch.float64, device=device)

        self.on_count = zeros(width)
        self.nonzero = zeros(width)
        self.co_on = zeros(width, width)
        self.pre_gram = zeros(width + 1, width + 1)
        self.post_gram = zeros(width, width)
        self.p2_on = zeros(width, width)
        self.p2_on_on = zeros(width, width)
        self.slope = float("nan")

    def update(self, pre: torch.Tensor, post: torch.Tensor) -> torch.Tensor:
        """Add a batch ``(batch, [pos], d)`` of pre- and post-activations; return ``on`` (n, d)."""
        if pre.shape != post.shape or pre.shape[-1] != self.width:
            raise DataError(
                f"layer {self.name!r}: pre-activations {tuple(pre.shape)} and activations "
                f"{tuple(post.shape)} must have the same shape with width {self.width}"
            )
        p = pre.reshape(-1, self.width).to(torch.float64)
        f = post.reshape(-1, self.width).to(torch.float64)
        if not (bool(torch.isfinite(p).all()) and bool(torch.isfinite(f).all())):
            raise NonFiniteError(
                f"layer {self.name!r}: NaN/Inf in pre- or post-activations; check the model's "
                "parameters and the data for NaN/Inf or overflow"
            )
        self._check_relu_like(p, f)
        on = (p >= 0).to(torch.float64)  # eq. 17: r = 1 where p = 0
        p2 = p * p
        ones = torch.ones(p.shape[0], 1, dtype=torch.float64, device=p.device)
        pc = torch.cat([p, ones], dim=1)
        self.count += p.shape[0]
        self.on_count += on.sum(0)
        self.nonzero += (f != 0).to(torch.float64).sum(0)
        self.co_on += on.T @ on
        self.pre_gram += pc.T @ pc
        self.post_gram += f.T @ f
        self.p2_on += p2.T @ on
        self.p2_on_on += (p2 * on).T @ on
        return on

    def _check_relu_like(self, p: torch.Tensor, f: torch.Tensor) -> None:
        """Raise :class:`DataError` unless ``f = p`` where ``p > 0`` and ``f = a p`` elsewhere."""
        pos, neg = p > 0, p < 0
        bad_pos = pos & ((f - p).abs() > RELU_RTOL * p.abs())
        bad_zero = (p == 0) & (f != 0)
        slopes = f[neg] / p[neg]
        slope = self.slope
        if slopes.numel():
            lo, hi = float(slopes.min()), float(slopes.max())
            slope = lo if slope != slope else slope  # first batch with p < 0 fixes the slope
            bad_neg = (slopes - slope).abs() > RELU_RTOL * max(1.0, abs(slope)) + 1e-12
            if not 0.0 <= slope < 1.0 or bool(bad_neg.any()):
                self._not_relu(p, f, f"f/p on p < 0 ranges over [{lo:.4g}, {hi:.4g}]")
            self.slope = slope
        if bool(bad_pos.any()) or bool(bad_zero.any()):
            idx = (bad_pos | bad_zero).nonzero()[0]
            detail = (
                f"e.g. p = {float(p[idx[0], idx[1]]):.6g} but f = {float(f[idx[0], idx[1]]):.6g}"
            )
            self._not_relu(p, f, detail)

    def _not_relu(self, p: torch.Tensor, f: torch.Tensor, detail: str) -> None:
        raise DataError(
            f"layer {self.name!r} is not ReLU-like: its activations are not max(p, 0) nor a "
            f"leaky ReLU of its pre-activations ({detail}). Synchronisation (seed 004 §3.2, "
            "eq. 17) needs piecewise-linear gates r(x) in {a, 1}; GELU, tanh or softplus "
            "layers have none. Check that `layer` receives the pre-activations and `post` the "
            "activations of the same neurons."
        )


def resolve_post(model: nn.Module, layer: str, post: str | None) -> tuple[str, Where]:
    """Where the activations of ``layer``'s neurons are read: ``(module name, input|output)``.

    ``post=None``: for a hook point named ``...hook_pre`` the sibling ``...hook_post``'s input
    (TransformerLens MLP blocks); otherwise the output of the ``layer`` module itself (an
    activation module such as ``nn.ReLU``). A given ``post`` is read at its input.
    """
    modules = dict(model.named_modules())
    if post is None and layer.endswith("hook_pre"):
        post = layer[: -len("hook_pre")] + "hook_post"
        if post not in modules:
            raise NodeLayerError(f"layer {layer!r} has no sibling {post!r}; pass post=...")
        return post, "input"
    if post is None:
        return layer, "output"
    return post, "input"


def _first_float(args: tuple[Any, ...], name: str) -> torch.Tensor:
    for a in args:
        if isinstance(a, torch.Tensor) and a.is_floating_point():
            return a
    raise DataError(f"module {name!r} receives no floating-point tensor input")


def capture_points(
    model: nn.Module,
    inputs: torch.Tensor,
    points: Sequence[tuple[str, Where]],
) -> dict[tuple[str, Where], torch.Tensor]:
    """One forward pass; the input or output tensor of each named module in ``points``.

    Raises :class:`NodeLayerError` for unknown names and for modules called other than once.
    """
    modules = dict(model.named_modules())
    got: dict[tuple[str, Where], torch.Tensor] = {}
    handles = []
    for name, where in points:
        if name not in modules or name == "":
            raise NodeLayerError(f"unknown module {name!r}: not in model.named_modules()")

        def hook(_m: nn.Module, args: tuple[Any, ...], out: Any, key=(name, where)) -> None:
            if key in got:
                raise NodeLayerError(f"module {key[0]!r} runs more than once per forward pass")
            t = _first_float(args, key[0]) if key[1] == "input" else out
            if not isinstance(t, torch.Tensor):
                raise DataError(
                    f"module {key[0]!r} returns {type(t).__name__}, not a tensor: its output "
                    "holds no activations; pass post=... naming a module whose input they are"
                )
            got[key] = t.detach()

        handles.append(modules[name].register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(inputs)
    finally:
        for h in handles:
            h.remove()
    missing = [p for p in points if p not in got]
    if missing:
        raise NodeLayerError(
            f"modules {[m for m, _ in missing]} never ran in the forward pass; name modules "
            "that the model's forward calls"
        )
    return got


def accumulate(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    layers: Sequence[tuple[str, str, Where]],
    on_batch: Callable[[list[torch.Tensor]], None] | None = None,
) -> list[GateStats]:
    """Gate statistics of several layers ``(layer, post, where)`` in one pass over the data.

    ``on_batch`` (optional) receives the per-batch gate matrices ``on`` (one ``(n, d)`` tensor
    per layer) and post-activation non-zero masks, for cross-layer statistics.
    """
    points: list[tuple[str, Where]] = []
    for layer, post, where in layers:
        points += [(layer, "input"), (post, where)]
    stats: list[GateStats] = []
    for x in batches:
        acts = capture_points(model, x, list(dict.fromkeys(points)))
        masks: list[torch.Tensor] = []
        for i, (layer, post, where) in enumerate(layers):
            p, f = acts[(layer, "input")], acts[(post, where)]
            if len(stats) <= i:
                stats.append(GateStats(layer, p.shape[-1], p.device))
            masks.append(stats[i].update(p, f))
            masks.append((f.reshape(-1, p.shape[-1]) != 0).to(torch.float64))
        if on_batch is not None:
            on_batch(masks)
    return stats
