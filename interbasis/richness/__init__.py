"""Feature-learning richness: D_LR, CKA, the spectral view and baselines (seed 001).

- :mod:`~interbasis.richness.cka`: ``cka``, ``d_lr`` (eqs. 3, 4, 7, 58; appendix E.1)
- :mod:`~interbasis.richness.spectrum`: ρ_k, Π*(k), Π̂(k), D_eff (eqs. 5, 6, 9; appendix J.3)
- :mod:`~interbasis.richness.baselines`: S_init, ||θ||², NC1, Tr(Σ_W) (§4.1, appendix H.2)
- :mod:`~interbasis.richness.tracker`: ``RichnessTracker`` training callback
"""

from interbasis.richness.baselines import (
    class_covariances,
    nc1,
    parameter_norm_sq,
    within_class_trace,
)
from interbasis.richness.cka import cka, d_lr, output_span
from interbasis.richness.spectrum import (
    FeatureSpectrum,
    FeatureView,
    cumulative_projection,
    effective_dimension,
    feature_spectrum,
    feature_view,
)
from interbasis.richness.tracker import RichnessTracker, collect_features

__all__ = [
    "FeatureSpectrum",
    "FeatureView",
    "RichnessTracker",
    "cka",
    "class_covariances",
    "collect_features",
    "cumulative_projection",
    "d_lr",
    "effective_dimension",
    "feature_spectrum",
    "feature_view",
    "nc1",
    "output_span",
    "parameter_norm_sq",
    "within_class_trace",
]
