"""Matrix-free curvature operators: the shared ``scipy.sparse.linalg.LinearOperator`` base.

A subclass supplies one batched product ``(x, y, V) -> C_b V`` for a batch ``b`` and a
block of columns ``V`` of shape ``(P, m)``; the base class sums it over batches with the
weights of :class:`~interbasis.curvature.objective.Objective`, cuts wide blocks into chunks
of ``chunk_size`` columns (each chunk one :func:`torch.vmap` call), checks every product for
NaN/Inf and bridges numpy (scipy's side: float64 arrays) and torch.

Distributed (the objective's ``process_group``): each rank sums ``w_b C_b V`` over its shard
of the batches in float64 and one all-reduce per call adds the ranks' ``(P, m)`` partial
sums, so every rank gets the same ``C V``; the weights ``w_b = n_b / N`` already carry the
total sample count ``N`` of all ranks. Eigensolvers on the operator then run identically on
every rank (the same products, the same seeded start vectors).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator

from interbasis.curvature.objective import Objective
from interbasis.curvature.params import ParamLayout
from interbasis.errors import DataError, NonFiniteError


class CurvatureOperator(LinearOperator):
    """Symmetric ``(P, P)`` curvature matrix of ``objective`` applied matrix-free.

    The parameters are a snapshot taken when the objective was built: after the model
    changes, build a new operator.

    Attributes
    ----------
    objective : Objective
    layout : ParamLayout
    n_products : int
        Number of matrix-vector products computed so far (columns, summed over calls).
    """

    kind = "curvature"

    def __init__(self, objective: Objective, chunk_size: int = 64) -> None:
        p = objective.layout.size
        super().__init__(dtype=np.dtype(np.float64), shape=(p, p))
        self.objective = objective
        self.layout: ParamLayout = objective.layout
        self.chunk_size = int(chunk_size)
        self.n_products = 0

    # subclasses implement this: (P, m) -> (P, m) for one batch, vmapped over columns
    def _batch_matmat(self, x: torch.Tensor, y: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(
            f"{type(self).__name__} does not implement _batch_matmat: CurvatureOperator is a "
            "base class; use HessianOperator or GGNOperator, or implement "
            "_batch_matmat(x, y, V) -> (P, m) in the subclass"
        )

    def matmat_torch(self, V: torch.Tensor) -> torch.Tensor:
        """``C @ V`` (float64) for ``V`` of shape ``(P,)`` or ``(P, m)`` as a torch tensor.

        Each column is ``sum_b w_b C_b v`` accumulated in float64; with a process group the
        ranks' partial sums over their batches are all-reduced (one ``(P, m)`` float64
        all-reduce per call), so every rank returns the same product. A NaN/Inf product
        raises :class:`~interbasis.errors.NonFiniteError` on every rank.
        """
        obj = self.objective
        vec = V.ndim == 1
        V2 = V.reshape(V.shape[0], -1).to(obj.dtype)
        if V2.shape[0] != self.shape[0]:
            raise DataError(
                f"{self.kind}: vector of length {V2.shape[0]}, expected {self.shape[0]} (one "
                "entry per parameter, in ParamLayout order)"
            )
        shard = obj.shard
        out = torch.zeros(V2.shape, dtype=torch.float64, device=V2.device)
        with shard.stage(f"{self.kind}-vector products"):  # a rank that raises stops all
            for start in range(0, V2.shape[1], self.chunk_size):
                block = V2[:, start : start + self.chunk_size]
                acc = out[:, start : start + self.chunk_size]
                for w, (x, y) in zip(obj.weights, obj.batches, strict=True):
                    acc += w * self._batch_matmat(x, y, block).to(torch.float64)
                if not shard.active:
                    self._check_finite(acc, start)  # stop at the first bad chunk
        if shard.active:
            out = shard.sum(out)
            self._check_finite(out, 0)
        self.n_products += V2.shape[1]
        return out.reshape(-1) if vec else out

    def _check_finite(self, out: torch.Tensor, offset: int) -> None:
        """Raise if a column of ``out`` (products ``n_products + offset + 1, ...``) has NaN/Inf."""
        bad = ~torch.isfinite(out)
        if bool(bad.any()):
            row = int(bad.any(dim=1).nonzero()[0])
            column = int(bad.any(dim=0).nonzero()[0])
            name = next(n for n, s in self.layout.slices.items() if s.start <= row < s.stop)
            raise NonFiniteError(
                f"{self.kind}-vector product #{self.n_products + offset + column + 1} is not "
                f"finite: {int(bad.sum())} NaN/Inf entries, the first in parameter {name!r}"
            )

    def _matmat(self, X: np.ndarray) -> np.ndarray:
        V = torch.as_tensor(np.asarray(X, dtype=np.float64))
        return self.matmat_torch(V).cpu().numpy()

    def _matvec(self, x: np.ndarray) -> np.ndarray:
        return self._matmat(np.asarray(x).reshape(-1, 1)).reshape(-1)

    def _adjoint(self) -> CurvatureOperator:
        return self

    def to_dense(self) -> torch.Tensor:
        """The full ``(P, P)`` float64 matrix, from ``P`` products with the identity."""
        return self.matmat_torch(torch.eye(self.shape[0], dtype=torch.float64)).to(torch.float64)

    def restrict(self, names: Sequence[str]) -> RestrictedOperator:
        """The diagonal block ``C[idx, idx]`` for the parameters ``names``, matrix-free."""
        return RestrictedOperator(self, self.layout.indices(names))


class RestrictedOperator(LinearOperator):
    """Diagonal block ``C[idx, idx]`` of a :class:`CurvatureOperator` (``u -> (C [u]_idx)_idx``)."""

    def __init__(self, parent: CurvatureOperator, idx: torch.Tensor) -> None:
        super().__init__(dtype=np.dtype(np.float64), shape=(len(idx), len(idx)))
        self.parent = parent
        self.idx = idx

    def matmat_torch(self, U: torch.Tensor) -> torch.Tensor:
        """``C[idx, idx] @ U`` for ``U`` of shape ``(len(idx),)`` or ``(len(idx), m)``."""
        vec = U.ndim == 1
        U2 = U.reshape(U.shape[0], -1)
        full = torch.zeros(self.parent.shape[0], U2.shape[1], dtype=torch.float64)
        full[self.idx] = U2.to(torch.float64)
        out = self.parent.matmat_torch(full)[self.idx]
        return out.reshape(-1) if vec else out

    def _matmat(self, X: np.ndarray) -> np.ndarray:
        return self.matmat_torch(torch.as_tensor(np.asarray(X, dtype=np.float64))).numpy()

    def _matvec(self, x: np.ndarray) -> np.ndarray:
        return self._matmat(np.asarray(x).reshape(-1, 1)).reshape(-1)

    def _adjoint(self) -> RestrictedOperator:
        return self

    def to_dense(self) -> torch.Tensor:
        """The block as a dense float64 matrix."""
        return self.matmat_torch(torch.eye(self.shape[0], dtype=torch.float64))
