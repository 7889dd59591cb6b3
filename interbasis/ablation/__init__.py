"""Faithfulness tests of interaction graphs: ablation curves, edge and module ablations.

``from interbasis.ablation import ablation_curve, edge_ablation, edges_needed, module_ablation``
(DESIGN §7). See docs/faithfulness.md.
"""

from interbasis.ablation.curves import AblationCurve, ablation_curve
from interbasis.ablation.directions import DirectionAblation, importance_order
from interbasis.ablation.edges import EdgeAblation, EdgesNeeded, edge_ablation, edges_needed
from interbasis.ablation.metrics import METRICS
from interbasis.ablation.modules import ModuleAblation, module_ablation

__all__ = [
    "METRICS",
    "AblationCurve",
    "DirectionAblation",
    "EdgeAblation",
    "EdgesNeeded",
    "ModuleAblation",
    "ablation_curve",
    "edge_ablation",
    "edges_needed",
    "importance_order",
    "module_ablation",
]
