"""Figures and Markdown tables of :mod:`experiments.spectral_edge_modes` (seed 003).

Per run: the tracker history, heatmaps of the modes of the edge, a bulk direction and random
controls, and their Fourier spectra. Over seeds: the tables (update spectrum, concentrations
against bulk and random controls, ablation) and the controls figure, optionally copied to the
docs.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from interbasis.plotting.spectral_edge import (
    plot_concentration_spectra,
    plot_controls,
    plot_edge_history,
    plot_mode_heatmaps,
)
from interbasis.spectral_edge import compare_to_controls

OPS = ("add", "sub", "mul", "x2y2", "multitask")
MULTITASK_OPS = ("add", "mul", "x2y2")
PRIMARY = {"add": "sum", "sub": "diff", "mul": "dlog", "x2y2": "sum"}
N_EDGE, N_RECORD = 3, 8
WINDOWS = ("first", "grok", "final")


def split_groups(values: Sequence[Any], n_dirs: int) -> dict[str, list[Any]]:
    """Values of the n_dirs window directions + the random ones: edge, bulk and random."""
    v = list(values)
    return {"edge": v[:N_EDGE], "bulk": v[N_EDGE:n_dirs], "random": v[n_dirs:]}


def history_figure(out: dict[str, Any], path: Path) -> None:
    """The tracker history of one run (σ's, gap ratios, gradient share; grokking marked)."""
    import matplotlib.pyplot as plt

    hist = {k: np.asarray(v, dtype=float) for k, v in out["history"].items()}
    if hist["step"].size:
        fig = plot_edge_history(hist, grok_step=out["grok_step"])
        fig.savefig(path, dpi=110)
        plt.close(fig)


def figures(out: dict[str, Any], run_dir: Path) -> None:
    import matplotlib.pyplot as plt

    history_figure(out, run_dir / "history.png")
    for wname, w in out["windows"].items():
        for sub, m in w["ops"].items():
            g = PRIMARY[sub]
            n = w["n_dirs"]
            idx = [0, 1, 2, 3, n, n + 1, n + 2, n + 3]
            titles = [
                "edge v1",
                "edge v2",
                "edge v3",
                "bulk v4",
                "random 1",
                "random 2",
                "random 3",
                "random 4",
            ]
            titles = [f"{t}  F_{g}={m['F'][g][i]:.2f}" for t, i in zip(titles, idx, strict=True)]
            fig = plot_mode_heatmaps([m["heat"][i] for i in idx], titles)
            fig.savefig(run_dir / f"modes_{wname}_{sub}.png", dpi=100)
            plt.close(fig)
            power = {f"edge v{i + 1}": np.asarray(m["power"][g][i]) for i in range(N_EDGE)}
            ctrl = [np.asarray(pw) for pw in m["power"][g][n:]]
            fig = plot_concentration_spectra(
                power, f"{out['op']}/{sub} seed {out['seed']}, {wname} window, grouping {g}", ctrl
            )
            fig.savefig(run_dir / f"spectra_{wname}_{sub}.png", dpi=100)
            plt.close(fig)


# ----------------------------------------------------------------------------- table
def _ms(values: Sequence[Any], fmt: str = "{:.3f}") -> str:
    """'mean ± std' (ddof = 1) of the finite values."""
    v = np.asarray([x for x in values if x is not None], dtype=float)
    v = v[np.isfinite(v)]
    if v.size < 2:
        return fmt.format(v[0]) if v.size else "–"
    return f"{fmt.format(v.mean())} ± {fmt.format(v.std(ddof=1))}"


def _row(*cells: Any) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _header(*names: str) -> list[str]:
    return [_row(*names), _row(*["---"] * len(names))]


def _windows(results: list[dict[str, Any]], op: str, wname: str) -> list[dict[str, Any]]:
    return [r["windows"][wname] for r in results if r["op"] == op and wname in r["windows"]]


def _measures(sub: str) -> dict[str, Any]:
    """Per-direction measures of one op's modes: name -> function of the op's record."""
    groupings = ("sum", "diff", "prod", "dlog") if sub in ("mul", "x2y2") else (PRIMARY[sub],)
    out: dict[str, Any] = {f"F {g}": (lambda m, g=g: m["F"][g]) for g in groupings}
    g = PRIMARY[sub]
    out[f"F {g}, field Δh"] = lambda m: m["F_dh"][g]
    if sub == "mul":
        out["dlog gain F(dlog)/F(prod)"] = lambda m: list(
            np.asarray(m["F"]["dlog"]) / np.asarray(m["F"]["prod"])
        )
    for key in ("sum", "diff", "single", "other"):
        out[f"2-D split of Δh: {key}"] = lambda m, k=key: [d[k] for d in m["split_dh"]]
    out["2-D split of Δh on dlog grid: sum"] = lambda m: [d["sum"] for d in m["split_dh_dlog"]]
    return out


def _alignment(ws: list[dict[str, Any]]) -> list[str]:
    """|cos(v, θ_tracked)| cells edge | bulk | random | beats (windows that recorded it)."""
    ws = [w for w in ws if "cos_theta" in w]
    if not ws:
        return ["–", "–", "–", "–"]
    return _vs_controls([{**w, "ops": {"": w}} for w in ws], "", lambda m: m["cos_theta"])


def _vs_controls(ws: list[dict[str, Any]], sub: str, fn: Any) -> list[str]:
    """Cells edge | bulk | random | beats over seeds for one per-direction measure."""
    edge, bulk, rnd, beats = [], [], [], 0
    for w in ws:
        s = split_groups(fn(w["ops"][sub]), w["n_dirs"])
        edge.append(float(np.mean(s["edge"])))
        bulk.append(float(np.mean(s["bulk"])) if s["bulk"] else float("nan"))
        rnd += s["random"]
        beats += compare_to_controls([edge[-1]], s["random"]).edge_mean_beats
    return [_ms(edge), _ms(bulk), _ms(rnd), f"{beats}/{len(ws)}"]


def _directions_beating(m: dict[str, Any], n_dirs: int) -> int:
    """Number of edge directions whose dlog gain F(dlog)/F(prod) beats the random ones."""
    gain = np.asarray(m["F"]["dlog"]) / np.asarray(m["F"]["prod"])
    s = split_groups(gain, n_dirs)
    return int(compare_to_controls(s["edge"], s["random"]).beats.sum())


def _removed_fraction(ws: list[dict[str, Any]]) -> str:
    """‖P_edge θ‖ / ‖θ_tracked‖ over the windows that recorded ‖θ_tracked‖ (count if not all)."""
    frac = [w["ablation"]["removed_norm"] / w["theta_norm"] for w in ws if "theta_norm" in w]
    note = f" ({len(frac)} of {len(ws)} seeds)" if len(frac) < len(ws) else ""
    return _ms(frac, "{:.2f}") + note


def table(results: list[dict[str, Any]]) -> str:
    """Markdown tables over seeds (mean ± std over seeds; random controls pooled)."""
    ops = sorted({r["op"] for r in results}, key=OPS.index)
    cases = [(op, w) for op in ops for w in WINDOWS if _windows(results, op, w)]
    out = ["## Training and update spectrum", ""]
    out += _header(
        "op",
        "seeds (grokked)",
        "grok step",
        "window",
        "window step",
        "σ2/σ3 (centred, W)",
        "k* (uncentred, W/2)",
        "max gap (uncentred, W/2)",
        "grad share of edge energy before / after grok",
    )
    for op, wname in cases:
        rs = [r for r in results if r["op"] == op]
        grokked = [r for r in rs if r["grok_step"] is not None]
        pre: list[float] = []
        post: list[float] = []
        for r in grokked:
            st = np.asarray(r["history"]["step"])
            sh = np.asarray(r["history"]["grad_share"], dtype=float)
            pre += sh[st <= r["grok_step"]].tolist()
            post += sh[st > r["grok_step"] + r["window_span"]].tolist()
        ws = _windows(results, op, wname)
        out.append(
            _row(
                op,
                f"{len(rs)} ({len(grokked)})",
                _ms([r["grok_step"] for r in grokked], "{:.0f}"),
                wname,
                _ms([w["step"] for w in ws], "{:.0f}"),
                _ms([w["gap23"] for w in ws], "{:.2f}"),
                _ms([w.get("thesis_k_star") for w in ws], "{:.1f}"),
                _ms([w.get("thesis_max_gap") for w in ws], "{:.2f}"),
                f"{_ms(pre, '{:.2f}')} / {_ms(post, '{:.2f}')}",
            )
        )
    out += [
        "",
        "## Functional modes: edge v1–v3 against bulk v4–v8 and random directions",
        "",
        "F: Fourier concentration of f_v = ‖Δh‖² (or of the field Δh) grouped on the test "
        "pairs. Edge, bulk: mean ± std over seeds of each seed's mean over its directions. "
        "Random: mean ± std over all random directions of all seeds. *beats*: seeds whose "
        "edge mean exceeds that seed's random mean + 2 std. The alignment with θ_tracked is "
        "only in the analyses that recorded it (the count of seeds is in the last column).",
        "",
    ]
    out += _header("op", "window", "measure", "edge", "bulk", "random", "beats random")
    for op, wname in cases:
        ws = _windows(results, op, wname)
        for sub in ws[0]["ops"]:
            name = op if op != "multitask" else f"multitask/{sub}"
            for label, fn in _measures(sub).items():
                out.append(_row(name, wname, label, *_vs_controls(ws, sub, fn)))
            if sub == "mul":
                counts = [_directions_beating(w["ops"][sub], w["n_dirs"]) for w in ws]
                label = "dlog gain: edge directions above random mean + 2 std, per seed"
                out.append(_row(name, wname, label, counts, "", "", ""))
            g = PRIMARY[sub]
            peaks = [w["ops"][sub]["peak"][g][:N_EDGE] for w in ws]
            out.append(_row(name, wname, f"peak ω of v1–v3 ({g}), per seed", peaks, "", "", ""))
        out.append(_row(op, wname, "alignment abs(cos(v, θ_tracked))", *_alignment(ws)))
    out += ["", "## Ablation: test accuracy after removing directions from θ_tracked", ""]
    out += _header(
        "op",
        "window",
        "baseline",
        "edge v1–v3 projected out",
        "3 random directions projected out",
        "random move of equal norm",
        "‖P_edge θ‖",
        "‖P_edge θ‖ / ‖θ_tracked‖",
    )
    for op, wname in cases:
        ws = _windows(results, op, wname)
        ab = [w["ablation"] for w in ws]
        out.append(
            _row(
                op,
                wname,
                *[_ms([x[k] for x in ab]) for k in ("baseline", "edge")],
                _ms([np.mean(x["random_subspace"]) for x in ab]),
                _ms([np.mean(x["random_equal_norm"]) for x in ab]),
                _ms([x["removed_norm"] for x in ab], "{:.2f}"),
                _removed_fraction(ws),
            )
        )
    single = [w["ops"]["x2y2"]["F"]["sum"][:N_EDGE] for w in _windows(results, "x2y2", "final")]
    multi = [w["ops"]["x2y2"]["F"]["sum"][:N_EDGE] for w in _windows(results, "multitask", "final")]
    if single and multi:
        out += [
            "",
            f"Multitask amplification (seed: 2.3×): F_sum of the x²+y² edge, multitask / "
            f"single task = {np.mean(multi) / np.mean(single):.2f} (final windows).",
        ]
    return "\n".join(out) + "\n"


def controls_figure(results: list[dict[str, Any]], path: Path) -> None:
    """Edge vs bulk vs random, final windows of all seeds: F (primary grouping) and the a+b
    share of Δh's 2-D energy (on the discrete-log grid for mul)."""
    import matplotlib.pyplot as plt

    panels: dict[str, dict[str, list[float]]] = {"F": {}, "a+b": {}}
    for r in results:
        w = r["windows"].get("final")
        for sub, m in (w or {"ops": {}})["ops"].items():
            name = r["op"] if r["op"] != "multitask" else f"mt/{sub}"
            split = m["split_dh_dlog" if sub == "mul" else "split_dh"]
            values = {"F": m["F"][PRIMARY[sub]], "a+b": [d["sum"] for d in split]}
            for panel, v in values.items():
                for label, x in split_groups(v, w["n_dirs"]).items():
                    panels[panel].setdefault(f"{name}\n{label}", []).extend(x)
    if not panels["F"]:
        return
    ylabels = {"F": "F of f_v (primary grouping)", "a+b": "a+b share of Δh (dlog grid for mul)"}
    fig, axes = plt.subplots(1, 2, figsize=(max(7.0, 1.3 * len(panels["F"])), 3.4))
    for ax, (panel, groups) in zip(axes, panels.items(), strict=True):
        plot_controls(groups, ylabels[panel], "final window, all seeds", ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_docs(
    results: list[dict[str, Any]], text: str, ops: Sequence[str], out: Path, docs: Path, p: int
) -> None:
    """Write the table ``text`` to ``docs/spectral_edge_table.md``, and the controls figure
    and the figures of seed 0 of each op to ``docs/figures/spectral_edge_*.png``."""
    fig_dir = docs / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    header = f"<!-- written by python -m experiments.spectral_edge_modes; p = {p} -->\n\n"
    (docs / "spectral_edge_table.md").write_text(header + text)
    controls_figure(results, fig_dir / "spectral_edge_controls.png")
    for op in ops:
        first = [r for r in results if r["op"] == op and r["seed"] == 0]
        if first:  # redrawn: analyses written by older versions kept round-off σ's
            history_figure(first[0], fig_dir / f"spectral_edge_{op}_history.png")
        src = out / f"{op}_s0"
        sub = "x2y2" if op == "multitask" else op
        for name in (
            f"modes_final_{sub}.png",
            f"spectra_first_{sub}.png",
            f"spectra_final_{sub}.png",
        ):
            if (src / name).is_file():
                shutil.copy(src / name, fig_dir / f"spectral_edge_{op}_{name}")
