"""Fixed-gates networks: masked linear maps whose gates do not depend on the input.

Seed 002 studies piecewise-linear networks inside one activation region, where the network is

.. math::  f(x) = D_L (W_L \\cdots D_2 (W_2\\, D_1 (W_1 x + b_1) + b_2) \\cdots) + b_L,

with the masks ``D_l`` frozen. :class:`FixedGatesMLP` is that model as an ``nn.Module``
(weights trainable, masks buffers). Two constructors give the two comparison models of the
theory: masks frozen from one input of a real network (:meth:`FixedGatesMLP.from_model`), and
i.i.d. Bernoulli(p) masks with Gaussian weights (:meth:`FixedGatesMLP.random`).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from interbasis.errors import DataError, ShapeError
from interbasis.jacobian_spectra.chain import (
    PiecewiseLinearLayer,
    layer_jacobians,
    piecewise_linear_layers,
)
from interbasis.train_mode import TrainMode, analysed_model, check_train_mode

__all__ = ["FixedGatesMLP"]


class FixedGatesMLP(nn.Module):
    """``h_{l+1} = m_{l+1} * (W_{l+1} h_l + b_{l+1})`` with fixed gate vectors ``m_l``.

    The module is created in eval mode: its function does not depend on the mode (no dropout
    or batch norm), so the train-mode policy of :func:`~.chain.layer_jacobians` has nothing
    to warn about; ``train()`` / ``eval()`` work as for any module.

    Parameters
    ----------
    weights : sequence of Tensor
        ``W_l`` ``(d_l, d_{l-1})``.
    biases : sequence of Tensor or None
        ``b_l`` ``(d_l,)``; None entries (or ``biases=None``) mean no bias.
    masks : sequence of Tensor
        Gate values ``m_l`` ``(d_l,)`` (0/1 for ReLU, slope/1 for leaky ReLU; ones for none).
    """

    def __init__(
        self,
        weights: Sequence[Tensor],
        biases: Sequence[Tensor | None] | None,
        masks: Sequence[Tensor],
    ) -> None:
        super().__init__()
        if not weights:
            raise DataError("FixedGatesMLP needs at least one layer (depth 0 given)")
        biases = [None] * len(weights) if biases is None else list(biases)
        if not len(weights) == len(biases) == len(masks):
            raise ShapeError(
                f"got {len(weights)} weights, {len(biases)} biases and {len(masks)} masks; "
                "pass one bias (or None) and one mask per weight"
            )
        self.weights = nn.ParameterList([nn.Parameter(w.detach().clone()) for w in weights])
        self.biases = nn.ParameterList(
            [nn.Parameter(b.detach().clone()) for b in biases if b is not None]
        )
        self._has_bias = [b is not None for b in biases]
        for k, (w, b, m) in enumerate(zip(weights, biases, masks, strict=True)):
            prev = weights[k - 1].shape[0] if k else w.shape[1]
            if w.ndim != 2 or w.shape[1] != prev or m.shape != (w.shape[0],):
                raise ShapeError(
                    f"layer {k}: weight {tuple(w.shape)} / mask {tuple(m.shape)} do not chain "
                    f"after width {prev}"
                )
            if b is not None and b.shape != (w.shape[0],):
                raise ShapeError(f"layer {k}: bias {tuple(b.shape)} for weight {tuple(w.shape)}")
            self.register_buffer(f"mask_{k}", m.detach().clone().to(w.dtype))
        self.eval()

    @property
    def masks(self) -> list[Tensor]:
        """The fixed gate vectors ``m_l``."""
        return [getattr(self, f"mask_{k}") for k in range(len(self.weights))]

    def _bias(self, k: int) -> Tensor | None:
        if not self._has_bias[k]:
            return None
        return self.biases[sum(self._has_bias[:k])]

    def piecewise_linear_layers(self) -> list[PiecewiseLinearLayer]:
        """The chain read by :func:`~interbasis.jacobian_spectra.layer_jacobians`."""
        return [
            PiecewiseLinearLayer(f"weights.{k}", w.detach(), _maybe(self._bias(k)), mask=m)
            for k, (w, m) in enumerate(zip(self.weights, self.masks, strict=True))
        ]

    def forward(self, x: Tensor) -> Tensor:
        """``x`` ``(..., d_0)`` -> ``(..., d_L)``."""
        h = x
        for k, (w, m) in enumerate(zip(self.weights, self.masks, strict=True)):
            z = h @ w.T
            b = self._bias(k)
            h = m * (z if b is None else z + b)
        return h

    @classmethod
    def from_model(
        cls, model: nn.Module, x0: Tensor, *, train_mode: TrainMode = "eval"
    ) -> FixedGatesMLP:
        """Freeze the gates of a ReLU / leaky-ReLU ``model`` at the single input ``x0`` ``(d_0,)``.

        The result equals ``model`` on the activation region of ``x0`` (kink convention of
        :mod:`interbasis.jacobian_spectra.chain`). ``train_mode`` (``"eval"``, ``"error"``,
        ``"keep"``) is the train-mode policy of :func:`~.chain.layer_jacobians`: by default a
        model in train mode is read as an eval-mode copy, with a warning; the caller's model
        is never changed.
        """
        check_train_mode(train_mode)
        if not isinstance(x0, Tensor) or x0.ndim != 1:
            raise ShapeError(
                f"x0 must be one input (d_0,), got shape {tuple(getattr(x0, 'shape', ()))}"
            )
        model = analysed_model(model, train_mode, "fixed-gates network")
        layers = piecewise_linear_layers(model, train_mode="keep")
        jac = layer_jacobians(model, x0[None], dtype=layers[0].weight.dtype, train_mode="keep")
        return cls(
            [la.weight for la in layers],
            [la.bias for la in layers],
            [g[0] for g in jac.gates],
        )

    @classmethod
    def random(
        cls,
        widths: Sequence[int],
        keep_prob: float = 0.5,
        *,
        variance: float | None = None,
        gate_last: bool = False,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float64,
    ) -> FixedGatesMLP:
        """Bias-free net with ``W_l ~ N(0, variance / d_{l-1})`` and ``m_l ~ Bernoulli(keep_prob)``.

        ``widths = [d_0, ..., d_L]``. ``variance`` defaults to ``1 / keep_prob`` (He
        initialisation for ``keep_prob = 1/2``). The last layer is ungated unless ``gate_last``.
        """
        if len(widths) < 2 or min(widths) < 1:
            raise DataError(f"widths must list d_0..d_L (at least two positive), got {widths}")
        if not 0 < keep_prob <= 1:
            raise DataError(f"keep_prob must lie in (0, 1], got {keep_prob}")
        var = 1.0 / keep_prob if variance is None else variance
        weights, masks = [], []
        for k, (d_in, d_out) in enumerate(itertools.pairwise(widths)):
            w = torch.randn(d_out, d_in, generator=generator, dtype=dtype) * (var / d_in) ** 0.5
            weights.append(w)
            gated = gate_last or k < len(widths) - 2
            keep = torch.full((d_out,), keep_prob, dtype=dtype)
            masks.append(torch.bernoulli(keep, generator=generator) if gated else keep * 0 + 1)
        return cls(weights, None, masks)


def _maybe(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.detach()
