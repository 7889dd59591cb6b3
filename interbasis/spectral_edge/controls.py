"""Random-direction controls: is the edge's measure larger than chance?

A measure (e.g. the concentration F) of an edge direction means something only beside the
same measure of directions that carry no training signal. The controls are uniformly random
unit directions in the tracked parameter space (isotropic Gaussian, normalised) and the bulk
directions v_4 … v_8 of the same window. The edge *beats* the controls when its value exceeds
``mean + n_std · std`` of the control values (std with ddof = 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from interbasis.errors import DataError


def random_directions(n: int, count: int, seed: int = 0) -> torch.Tensor:
    """``count`` independent uniformly random unit vectors in R^n, shape (count, n), float64."""
    if n < 1 or count < 1:
        raise DataError(f"need n >= 1 and count >= 1, got n={n}, count={count}")
    gen = torch.Generator().manual_seed(int(seed))
    x = torch.randn(count, n, generator=gen, dtype=torch.float64)
    return x / torch.linalg.vector_norm(x, dim=1, keepdim=True)


@dataclass(frozen=True)
class ControlComparison:
    """A measure of edge directions beside the same measure of control directions.

    Attributes
    ----------
    edge : numpy.ndarray, shape (k,)
        Value for each edge direction.
    controls : numpy.ndarray, shape (m,)
        Value for each control direction.
    mean, std : float
        Mean and standard deviation (ddof = 1) of the controls.
    n_std : float
        Margin used by :attr:`beats`.
    """

    edge: np.ndarray
    controls: np.ndarray
    mean: float
    std: float
    n_std: float

    @property
    def beats(self) -> np.ndarray:
        """Per edge direction: value > mean + n_std · std, shape (k,), bool."""
        return self.edge > self.mean + self.n_std * self.std

    @property
    def edge_mean_beats(self) -> bool:
        """The mean over edge directions exceeds mean + n_std · std."""
        return bool(np.mean(self.edge) > self.mean + self.n_std * self.std)

    @property
    def z(self) -> np.ndarray:
        """(edge − mean) / std per edge direction (inf where std = 0)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return (self.edge - self.mean) / self.std


def compare_to_controls(
    edge_values: np.ndarray | list[float],
    control_values: np.ndarray | list[float],
    n_std: float = 2.0,
) -> ControlComparison:
    """Summarise edge values against control values (see module docstring)."""
    edge = np.atleast_1d(np.asarray(edge_values, dtype=np.float64))
    ctrl = np.atleast_1d(np.asarray(control_values, dtype=np.float64))
    if ctrl.size < 2:
        raise DataError(f"need at least 2 control values for a std, got {ctrl.size}")
    if edge.size < 1:
        raise DataError("need at least 1 edge value")
    if not (np.all(np.isfinite(edge)) and np.all(np.isfinite(ctrl))):
        raise DataError("edge and control values must be finite")
    return ControlComparison(edge, ctrl, float(ctrl.mean()), float(ctrl.std(ddof=1)), float(n_std))
