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
        # ln2 -> unembed, constant node excluded: edges for 90 % and 99 % of the pair's weight
        counts[basis] = (graph.edges_needed(0.9)[0], graph.edges_needed(0.99)[0])
    print(f"edges for 90 % / 99 % of ln2->unembed weight: {counts}")
    # the figures docs/interaction_graph.md, docs/modadd_graph.md and docs/getting_started.md
    # cite ("18 edges where PCA needs 37"): counts of a float64 run, exact
    assert counts == {"interaction": (18, 49), "pca": (37, 113)}
