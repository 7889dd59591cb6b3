"""The deep-Jacobian-spectra experiment runs end to end in --quick mode and its numbers obey the
identities and closed forms they are meant to show (seed 002)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import matplotlib.image
import numpy as np
import pytest

from interbasis.jacobian_spectra import masked_gaussian_lyapunov


def test_quick_run_writes_results(tmp_path) -> None:
    out = tmp_path / "js"
    result = subprocess.run(
        [sys.executable, "-m", "experiments.jacobian_spectra", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run = out / "quick"  # --quick writes to a subfolder, beside a full run's results
    for name in ("jacobian_spectra_random.png", "jacobian_spectra_alignment.png"):
        image = matplotlib.image.imread(run / name)
        assert image.shape[0] > 200 and image.shape[1] > 500, (name, image.shape)
        assert float(image[..., :3].std()) > 0.05, f"{name} is blank"
    data = json.loads((run / "jacobian_spectra.json").read_text())
    s = data["settings"]
    assert (s["width"], s["depths"], s["train_steps"], s["k"]) == (32, [2, 4], 20, 3)

    # part A: the masked closed form for width 32, QR exponents ordered, σ1/σ2 >= 1
    rnd = data["random"]
    assert (rnd["width"], rnd["depth"]) == (32, 12)
    np.testing.assert_allclose(rnd["lyapunov_masked_theory"], masked_gaussian_lyapunov(32, 3))
    np.testing.assert_allclose(
        rnd["lyapunov_masked_theory"], [-0.04127, -0.07719, -0.11606], atol=1e-5
    )
    qr = rnd["lyapunov_qr"]
    assert qr == sorted(qr, reverse=True) and all(v < 0 for v in qr), qr
    assert all(v >= 1.0 for v in rnd["separation_median"].values())
    # E|<u, e>| for u uniform on the sphere of R^32: Γ(16) / (√π Γ(16.5))
    want = math.exp(math.lgamma(16) - math.lgamma(16.5)) / math.sqrt(math.pi)
    assert data["overlap_baseline"] == pytest.approx(want, rel=1e-12)
    assert 60 < data["random_angle_deg"] < 90  # random 2-planes in R^32 are nearly orthogonal

    # part B: both depths trained; with scope="global" the G^{1/2}-weighted Jacobian directions
    # ARE the interaction directions (an identity: round-off only)
    assert [r["depth"] for r in data["sweep"]] == [2, 4]
    for row in data["sweep"]:
        assert row["steps"] == 20 and math.isfinite(row["train_loss"])
        for state in ("init", "trained"):
            m = row[state]
            assert m["angles_deg_gram_weighted_max"] < 1e-6, (row["depth"], state)
            assert len(m["angles_deg_interaction"]) == row["depth"]
            assert all(0 <= a <= 90 for a in m["angles_deg_interaction"] + m["angles_deg_pca"])
            assert 0 <= m["consecutive_overlap"] <= 1 and m["separation_io"] >= 1
