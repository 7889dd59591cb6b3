"""Seed 001's lazy/rich rows on scikit-learn's bundled digits (stand-in for MNIST; issue 21).

Two experiments, each trained with MSE on one-hot targets (seed 001 appendix H.4) and scored
by D_LR = 1 − CKA(ΦΦᵀ, FFᵀ) (seed 001 eq. 4, :func:`interbasis.richness.d_lr`), Φ = the
input of the last linear layer and F = the network output, on the train and test splits:

* **target downscaling** (seed Table 2 / Fig. 11): targets ``y → y/α`` for α ∈ {0.2, 2, 20}
  with a 4-layer ReLU MLP (:class:`experiments.mlp.MLP`); larger α is lazier (Chizat et al.
  2019), the seed reports D_LR 0.049, 0.11, 0.56 on MNIST;
* **full vs last-layer-only training** (seed Table 3): a small CNN trained end to end (rich)
  or with only its last layer trained (lazy); the seed reports 0.043 vs 0.51 on MNIST.

Data: ``sklearn.datasets.load_digits`` (1 797 8×8 images shipped inside scikit-learn, no
download), pixels / 16, a fixed random split of 1 000 train images (the seed's Fig. 11 uses
1 000 MNIST images) and 797 test images. Training: Adam lr 1e-3, β = (0.9, 0.999), batch 128,
no weight decay (seed Table 10, Fig. 11 row), ``epochs`` passes over the training set.

Usage::

    python -m experiments.digits_richness --out docs/figures/digits_richness.json \\
        --figure docs/figures/digits_richness.png
    python -m experiments.digits_richness --quick      # narrower, 30 epochs (≈ 10 s of CPU)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from experiments.mlp import MLP, MLPConfig
from interbasis import DataError
from interbasis.richness import collect_features, d_lr

ALPHAS = (0.2, 2.0, 20.0)
SEED_TABLE = {  # seed 001 Tables 7 and 8 (MNIST), mean ± std of D_LR
    "alpha 0.2": (0.049, 0.0044),
    "alpha 2": (0.11, 0.0094),
    "alpha 20": (0.56, 0.061),
    "cnn full": (0.043, 0.005),
    "cnn last layer": (0.51, 0.008),
}


@dataclass(frozen=True)
class Setting:
    """Sizes and schedule of one run (``full``: the documented numbers; ``quick``: tests)."""

    epochs: int = 100
    mlp_width: int = 256
    cnn_channels: int = 32
    cnn_width: int = 256
    batch_size: int = 128
    lr: float = 1e-3
    n_train: int = 1000


FULL = Setting()
QUICK = Setting(epochs=30, mlp_width=128, cnn_channels=16, cnn_width=128)


def load_data(n_train: int = 1000, split_seed: int = 0) -> dict[str, tuple[torch.Tensor, ...]]:
    """``{"train": (x, labels), "test": (x, labels)}``: x (n, 1, 8, 8) float32 in [0, 1]."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # optional dependency of the experiments only
        raise DataError(
            "experiments.digits_richness needs scikit-learn: pip install scikit-learn"
        ) from err
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    if not 0 < n_train < len(x):
        raise DataError(f"n_train must lie in (0, {len(x)}), got {n_train}")
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(split_seed))
    tr, te = perm[:n_train], perm[n_train:]
    return {"train": (x[tr], y[tr]), "test": (x[te], y[te])}


class DigitsCNN(nn.Module):
    """conv3×3(1→c) ReLU, conv3×3(c→2c) ReLU, max-pool 2 → 4×4, ``fc`` → ``width`` ReLU, ``head``.

    x (batch, 1, 8, 8) -> (batch, 10). Φ is the input of ``head`` (``width`` features).
    """

    def __init__(self, channels: int, width: int, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)  # nn defaults draw from the global RNG; callers seed per run
        self.conv1 = nn.Conv2d(1, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, 2 * channels, 3, padding=1)
        self.fc = nn.Linear(2 * channels * 16, width)
        self.head = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2)
        return self.head(F.relu(self.fc(x.flatten(1))))


def make_model(kind: str, setting: Setting, seed: int) -> tuple[nn.Module, str]:
    """``(model, feature module name)`` for ``kind`` in {"mlp", "cnn"}."""
    if kind == "mlp":  # 4 linear layers: 64 → w → w → w → 10
        cfg = MLPConfig(64, [setting.mlp_width] * 3, 10, "relu", seed=seed)
        return nn.Sequential(nn.Flatten(), MLP(cfg)), "1.layers.3"
    if kind == "cnn":
        return DigitsCNN(setting.cnn_channels, setting.cnn_width, seed), "head"
    raise DataError(f"unknown model kind {kind!r}; expected 'mlp' or 'cnn'")


def train_and_measure(
    kind: str,
    alpha: float,
    seed: int,
    setting: Setting = FULL,
    last_layer_only: bool = False,
    data: dict[str, tuple[torch.Tensor, ...]] | None = None,
) -> dict[str, Any]:
    """Train one model with MSE to ``one_hot(y) / alpha``; return accuracies and D_LR.

    Returns ``{kind, alpha, seed, last_layer_only, train_acc, test_acc, train_d_lr,
    test_d_lr}`` (D_LR in the appendix E.1 "gram" form, float64).
    """
    if not alpha > 0:
        raise DataError(f"alpha must be > 0, got {alpha}")
    data = data or load_data(setting.n_train)
    model, feature_module = make_model(kind, setting, seed)
    head = model.get_submodule(feature_module)
    params = list(head.parameters()) if last_layer_only else list(model.parameters())
    if last_layer_only:
        for p in model.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=setting.lr, betas=(0.9, 0.999))
    x, y = data["train"]
    target = F.one_hot(y, 10).float() / alpha
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(setting.epochs):
        for idx in torch.randperm(len(x), generator=gen).split(setting.batch_size):
            loss = F.mse_loss(model(x[idx]), target[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    record: dict[str, Any] = dict(
        kind=kind, alpha=alpha, seed=seed, last_layer_only=last_layer_only
    )
    for split, (xs, ys) in data.items():
        phi, out = collect_features(model, xs, feature_module)
        record[f"{split}_acc"] = float((out.argmax(1) == ys).double().mean())
        record[f"{split}_d_lr"] = d_lr(phi, out)
    return record


def run_all(setting: Setting = FULL, seeds: Sequence[int] = (0, 1, 2)) -> list[dict[str, Any]]:
    """Every row: MLP at each α in :data:`ALPHAS`, CNN full and last-layer-only (α = 1)."""
    data = load_data(setting.n_train)
    rows = [train_and_measure("mlp", a, s, setting, data=data) for a in ALPHAS for s in seeds]
    rows += [
        train_and_measure("cnn", 1.0, s, setting, last_layer_only=last, data=data)
        for last in (False, True)
        for s in seeds
    ]
    return rows


def row_name(r: dict[str, Any]) -> str:
    if r["kind"] == "mlp":
        return f"alpha {r['alpha']:g}"
    return "cnn last layer" if r["last_layer_only"] else "cnn full"


def summarise(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Mean and std (over seeds) of each metric, per row name, with the seed's D_LR."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(row_name(r), []).append(r)
    out: dict[str, dict[str, Any]] = {}
    for name, rs in groups.items():
        stats: dict[str, Any] = {"n_seeds": len(rs), "seed_paper_d_lr": SEED_TABLE.get(name)}
        for key in ("train_acc", "test_acc", "train_d_lr", "test_d_lr"):
            values = [float(r[key]) for r in rs]
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            stats[key] = (statistics.fmean(values), std)
        out[name] = stats
    return out


def markdown_table(summary: dict[str, dict[str, Any]]) -> str:
    """The docs table: accuracies and D_LR, mean ± std over seeds, and the seed's D_LR."""
    lines = [
        "| row | train acc | test acc | D_LR train | D_LR test | seed 001 (MNIST) |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in summary.items():
        cells = [f"{m:.3f} ± {sd:.3f}" for m, sd in (s[k] for k in
                 ("train_acc", "test_acc", "train_d_lr", "test_d_lr"))]  # fmt: skip
        paper = s["seed_paper_d_lr"]
        ref = f"{paper[0]:g} ± {paper[1]:g}" if paper else "–"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {ref} |")
    return "\n".join(lines)


def plot(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Test D_LR per row (dots: seeds, bar: mean) beside seed 001's MNIST values (crosses)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summarise(rows)
    names = list(summary)
    fig, ax = plt.subplots(figsize=(7, 3.6), constrained_layout=True)
    for i, name in enumerate(names):
        values = [r["test_d_lr"] for r in rows if row_name(r) == name]
        ax.bar(i, summary[name]["test_d_lr"][0], color="C0", alpha=0.5,
               label="digits, mean" if i == 0 else None)  # fmt: skip
        ax.plot([i] * len(values), values, "o", color="C0", ms=4)
        paper = SEED_TABLE.get(name)
        if paper:
            ax.errorbar(i + 0.25, paper[0], yerr=paper[1], fmt="x", color="C3",
                        label="seed 001 (MNIST)" if i == 0 else None)  # fmt: skip
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("test D_LR (lower = richer)")
    ax.set_title("Lazy/rich rows on sklearn digits (stand-in for MNIST)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_json_atomic(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.digits_richness",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="narrower models, 30 epochs")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    parser.add_argument("--out", type=Path, help="write rows, summary and settings as JSON")
    parser.add_argument("--figure", type=Path, help="write the D_LR figure (PNG)")
    parser.add_argument("--from-json", type=Path, help="plot/table from an earlier --out file")
    args = parser.parse_args(argv)
    if args.from_json:
        rows = json.loads(args.from_json.read_text())["rows"]
        print(markdown_table(summarise(rows)))
        if args.figure:
            plot(rows, args.figure)
        return 0
    if args.seeds < 1:
        parser.error("--seeds must be >= 1")
    setting = QUICK if args.quick else FULL
    torch.set_num_threads(1)
    rows = run_all(setting, range(args.seeds))
    summary = summarise(rows)
    print(markdown_table(summary))
    if args.out:
        write_json_atomic({"setting": asdict(setting), "summary": summary, "rows": rows}, args.out)
    if args.figure:
        plot(rows, args.figure)
    return 0


if __name__ == "__main__":
    sys.exit(main())
