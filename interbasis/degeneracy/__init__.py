"""Degeneracy: synchronized neurons, Gram nullities, degeneracy counts and the Hessian link.

Seed 004 §3 explains why the interaction basis is smaller than the neuron basis: zero
eigenvalues of the activation Gram ``G`` (eqs 13-14), of the Jacobian Gram ``K`` (eq. 15)
and synchronized ReLUs (eqs 17-22) each create free directions of the behavioural loss, i.e.
zero eigenvalues of its Hessian at the trained parameters (eqs 6, 10). §4 (eqs 23-27) uses
them to sparsify the network's interactions. Modules:

- :mod:`.sync`: :func:`synchronized_neurons` (blocks, ranks ``s_a``, eq. 20 and a
  scale-invariant near-synchrony measure);
- :mod:`.report`: :func:`degeneracy_report`, every mechanism per layer with the overlaps it
  removes, next to the measured nullity;
- :mod:`.hessian`: :func:`behavioural_hessian_nullity`;
- :mod:`.stages`: which affine maps are counted (:func:`mlp_stages`, :func:`mlp_block_stages`);
- :mod:`.transforms`: the sparsifying transforms of §4;
- :mod:`.ranks`: the scale-free rank every count uses.

See ``docs/degeneracy.md``.
"""

from interbasis.degeneracy.hessian import (
    HessianNullity,
    behavioural_hessian_nullity,
    behavioural_mse,
)
from interbasis.degeneracy.ranks import RTOL, gram_nullity, gram_rank
from interbasis.degeneracy.report import (
    DegeneracyReport,
    LayerCounts,
    StageCounts,
    degeneracy_report,
)
from interbasis.degeneracy.stages import Stage, mlp_block_stages, mlp_stages
from interbasis.degeneracy.sync import SyncBlocks, synchronized_neurons
from interbasis.degeneracy.transforms import (
    InputReduction,
    SyncTransform,
    reduce_dependent_inputs,
    sync_block_transform,
)

__all__ = [
    "RTOL",
    "DegeneracyReport",
    "HessianNullity",
    "InputReduction",
    "LayerCounts",
    "Stage",
    "StageCounts",
    "SyncBlocks",
    "SyncTransform",
    "behavioural_hessian_nullity",
    "behavioural_mse",
    "degeneracy_report",
    "gram_nullity",
    "gram_rank",
    "mlp_block_stages",
    "mlp_stages",
    "reduce_dependent_inputs",
    "sync_block_transform",
    "synchronized_neurons",
]
