"""Deep Jacobian spectra (seed 002): products of masked linear maps, Lyapunov exponents,
singular-vector alignment, and their link to the interaction basis.

Modules: :mod:`.chain` (``D_l W_l`` factors and products), :mod:`.fixed_gates` (fixed-gates
networks), :mod:`.lyapunov` (QR iteration, closed forms, finite-depth spectra),
:mod:`.alignment` (alignment measures, principal angles), :mod:`.basis_link` (interaction
basis). See ``docs/jacobian_spectra.md``.
"""

from interbasis.jacobian_spectra.alignment import (
    AlignmentProfile,
    alignment_profile,
    principal_angles,
    random_overlap_baseline,
    rotation_baseline,
    top_singular,
)
from interbasis.jacobian_spectra.basis_link import (
    BasisLike,
    basis_directions,
    direction_angles,
    interaction_basis_angles,
    jacobian_input_directions,
)
from interbasis.jacobian_spectra.chain import (
    LayerJacobians,
    NotPiecewiseLinearError,
    PiecewiseLinearLayer,
    jacobian_product,
    layer_jacobians,
    piecewise_linear_layers,
)
from interbasis.jacobian_spectra.fixed_gates import FixedGatesMLP
from interbasis.jacobian_spectra.lyapunov import (
    LyapunovResult,
    depth_fit,
    gaussian_lyapunov,
    log_singular_values,
    lyapunov_exponents,
    masked_gaussian_lyapunov,
)

__all__ = [
    "AlignmentProfile",
    "BasisLike",
    "FixedGatesMLP",
    "LayerJacobians",
    "LyapunovResult",
    "NotPiecewiseLinearError",
    "PiecewiseLinearLayer",
    "alignment_profile",
    "basis_directions",
    "depth_fit",
    "direction_angles",
    "gaussian_lyapunov",
    "interaction_basis_angles",
    "jacobian_input_directions",
    "jacobian_product",
    "layer_jacobians",
    "log_singular_values",
    "lyapunov_exponents",
    "masked_gaussian_lyapunov",
    "piecewise_linear_layers",
    "principal_angles",
    "random_overlap_baseline",
    "rotation_baseline",
    "top_singular",
]
