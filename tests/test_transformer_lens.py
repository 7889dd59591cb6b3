"""A real TransformerLens HookedTransformer (3.x) as users bring it: hook points as node layers,
the default float64 copy (its ``.to`` takes one argument), the last position selected with
``keep_positions`` and ``output=``; the rib checkpoint loaded into it reproduces our transformer.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import interbasis as ib

HookedTransformer = pytest.importorskip(
    "transformer_lens", reason="TransformerLens 3.x is not installed (see README)"
).HookedTransformer

pytestmark = pytest.mark.usefixtures("one_thread")

TL_LAYERS = ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_mid", "unembed", "output"]
OURS = ["blocks.0.ln1", "blocks.0.ln2", "unembed", "output"]
KEEP = {"blocks.0.hook_resid_mid": [-1], "unembed": [-1]}


def _hooked_rib() -> torch.nn.Module:
    import warnings

    from transformer_lens import HookedTransformerConfig

    from experiments.checkpoint_io import RIB_MODADD_CHECKPOINT, read_rib_config

    cfg = read_rib_config(RIB_MODADD_CHECKPOINT)["model"]
    with warnings.catch_warnings():  # 3.x announces the 4.x TransformerBridge
        warnings.simplefilter("ignore", DeprecationWarning)
        model = HookedTransformer(HookedTransformerConfig(**cfg, device="cpu"))
    state = torch.load(RIB_MODADD_CHECKPOINT, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=False)
    return model.eval()


@pytest.fixture(scope="module")
def data(rib_train_inputs) -> torch.Tensor:
    return rib_train_inputs[:600]


def test_hooked_transformer_reproduces_our_transformer(rib_model, data) -> None:
    tl = _hooked_rib()
    before = {k: v.clone() for k, v in tl.state_dict().items()}
    last = lambda logits: logits[:, -1]  # noqa: E731  (a HookedTransformer returns every position)
    got = ib.build_graph(tl, data, TL_LAYERS, keep_positions=KEEP, output=last, progress=False)
    want = ib.build_graph(rib_model, data, OURS, progress=False)
    assert [la.size for la in got.layers] == [la.size for la in want.layers]  # 110/57/84/114
    for a, b in zip(got.layers[1:], want.layers[1:], strict=True):  # to 1e-8 of each, or 1e-12
        big = np.nanmax(b.eigenvalues)  # of the largest (Λ down to 1e-13 of it)
        np.testing.assert_allclose(a.eigenvalues, b.eigenvalues, rtol=1e-8, atol=1e-12 * big)
    # resid_pre: the two models' Grams differ by round-off (1e-16) and its whitening has a
    # condition number near 1e8 (token embeddings), so its Λ agree to 2.5e-8 (measured)
    np.testing.assert_allclose(got.layers[0].eigenvalues[:11], want.layers[0].eigenvalues[:11],
                               rtol=1e-6)  # fmt: skip
    # (on all 3 830 train inputs our transformer gives rib's unembed Λ 9286.75, 5306.10,
    # 1891.80: tests/test_rib_anchor.py; 600 inputs keep this test fast)
    for a, b in zip(got.edges[1:], want.edges[1:], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-10 * b.max())
    # the resid_pre basis inherits the 2.5e-8 round-off, amplified where its Λ nearly coincide
    np.testing.assert_allclose(got.edges[0], want.edges[0], rtol=0, atol=1e-5 * want.edges[0].max())
    assert all(torch.equal(before[k], v) for k, v in tl.state_dict().items())  # not modified
    assert next(tl.parameters()).dtype == torch.float32


def test_ln1_called_three_times_is_refused_with_the_hook_points_to_use(data) -> None:
    from transformer_lens import HookedTransformerConfig

    cfg = HookedTransformerConfig(n_layers=1, d_model=16, n_heads=2, d_head=8, d_mlp=32,
                                  n_ctx=3, d_vocab=114, act_fn="relu", normalization_type="LN",
                                  device="cpu")  # fmt: skip
    tl = HookedTransformer(cfg).eval()
    with pytest.raises(ib.NodeLayerError, match="hook_resid_pre"):
        ib.build_graph(tl, data[:50], ["blocks.0.ln1", "blocks.0.hook_resid_mid"], progress=False)
