"""The shipped mod-add checkpoint: the interaction basis is sparser than PCA (graph test 5)."""

from __future__ import annotations

import torch

from interbasis import build_graph

# Local bases are computed from the output backwards, so the bases of blocks.0.ln2 and
# unembed do not depend on earlier node layers: three node layers suffice here.
LAYERS = ["blocks.0.ln2", "unembed", "output"]


def test_interaction_graph_needs_fewer_edges_than_pca(rib_model, rib_train_inputs) -> None:
    counts = {}
    for basis in ("interaction", "pca"):
        graph = build_graph(
            rib_model, rib_train_inputs, LAYERS, basis=basis, dtype=torch.float64, progress=False
        )
        counts[basis] = graph.edges_needed(0.9)[0]  # ln2 -> unembed, constant node excluded
    print(f"edges for 90 % of ln2->unembed weight: {counts}")
    assert counts["interaction"] < counts["pca"]
