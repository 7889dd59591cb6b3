"""Curvature of the loss: Hessian / GGN eigenpairs, traces, K-FAC check, eigenvector functions.

One object per module: :mod:`.params` (flat parameter layout), :mod:`.objective` (the loss as
a function of the flat vector), :mod:`.hessian`, :mod:`.ggn` (dense matrices and
``LinearOperator``\\ s), :mod:`.spectra` (eigh, Lanczos, per-block spectra), :mod:`.trace`
(Hutchinson), :mod:`.kfac` (seed 004 eq. 37), :mod:`.eigenfunctions` (seed 000) and
:mod:`.tracker` (training callback). See ``docs/curvature.md``.

Every sum over data (products, dense matrices, K-FAC factors) takes ``process_group=``
(default: the initialised default group, if any): each rank sums over its shard of the
batches and the sums are all-reduced in float64 (``docs/distributed.md``).
"""

from interbasis.curvature.eigenfunctions import (
    EigenFunctions,
    eigenvector_functions,
    sign_changes,
    spectral_centroid,
)
from interbasis.curvature.ggn import GGNOperator, ggn_matrix
from interbasis.curvature.hessian import HessianOperator, hessian_matrix
from interbasis.curvature.kfac import (
    KFACReport,
    KroneckerFactors,
    block_indices,
    kfac_check,
    kfac_factors,
)
from interbasis.curvature.objective import Objective
from interbasis.curvature.operator import CurvatureOperator, RestrictedOperator
from interbasis.curvature.params import ParamLayout
from interbasis.curvature.spectra import (
    Eigenpairs,
    block_spectra,
    eigh_descending,
    lanczos,
    numerical_floor,
)
from interbasis.curvature.trace import TraceEstimate, hutchinson
from interbasis.curvature.tracker import CurvatureTracker, subspace_rotation

__all__ = [
    "CurvatureOperator",
    "CurvatureTracker",
    "EigenFunctions",
    "Eigenpairs",
    "GGNOperator",
    "HessianOperator",
    "KFACReport",
    "KroneckerFactors",
    "Objective",
    "ParamLayout",
    "RestrictedOperator",
    "TraceEstimate",
    "block_indices",
    "block_spectra",
    "eigenvector_functions",
    "eigh_descending",
    "ggn_matrix",
    "hessian_matrix",
    "hutchinson",
    "kfac_check",
    "kfac_factors",
    "lanczos",
    "numerical_floor",
    "sign_changes",
    "spectral_centroid",
    "subspace_rotation",
]
