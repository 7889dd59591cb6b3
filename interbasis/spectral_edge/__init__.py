"""Spectral edge (seed 003): update-Gram tracker, functional modes over Z_p², controls.

* :class:`SpectralEdgeTracker` — training callback: rolling-window SVD of parameter updates,
  σ's, gap ratios, k*, g_23, edge directions, AdamW gradient / weight-decay split.
* :func:`functional_mode` — what a parameter direction does to the readout residual stream.
* :func:`group_keys`, :func:`group_means`, :func:`fourier_concentration`,
  :func:`fourier_split_2d`, :func:`dlog_grid` — groupings by a+b, a−b, a·b, discrete log and
  their Fourier measures.
* :func:`random_directions`, :func:`compare_to_controls` — random-direction controls.
* :func:`project_out`, :func:`ablate_directions` — ablating the edge against controls.
"""

from interbasis.spectral_edge.ablation import AblationResult, ablate_directions, project_out
from interbasis.spectral_edge.controls import (
    ControlComparison,
    compare_to_controls,
    random_directions,
)
from interbasis.spectral_edge.fourier import (
    Concentration,
    FourierSplit2D,
    dlog_grid,
    fourier_concentration,
    fourier_split_2d,
    to_grid,
)
from interbasis.spectral_edge.groups import (
    GROUPINGS,
    discrete_log_table,
    group_keys,
    group_means,
    is_prime,
    primitive_root,
)
from interbasis.spectral_edge.modes import functional_mode
from interbasis.spectral_edge.parameters import (
    ATTENTION_WEIGHTS,
    ParamLayout,
    flatten_params,
    select_parameters,
    unflatten,
)
from interbasis.spectral_edge.tracker import SpectralEdgeTracker
from interbasis.spectral_edge.window import WindowSpectrum, edge_energy_shares, window_spectrum

__all__ = [
    "ATTENTION_WEIGHTS",
    "GROUPINGS",
    "AblationResult",
    "Concentration",
    "ControlComparison",
    "FourierSplit2D",
    "ParamLayout",
    "SpectralEdgeTracker",
    "WindowSpectrum",
    "ablate_directions",
    "compare_to_controls",
    "discrete_log_table",
    "dlog_grid",
    "edge_energy_shares",
    "flatten_params",
    "fourier_concentration",
    "fourier_split_2d",
    "functional_mode",
    "group_keys",
    "group_means",
    "is_prime",
    "primitive_root",
    "project_out",
    "random_directions",
    "select_parameters",
    "to_grid",
    "unflatten",
    "window_spectrum",
]
