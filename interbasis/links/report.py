"""The atlas as files: a self-contained HTML page and a JSON of every number it shows.

The HTML is rendered from the report dictionary alone (every number on the page is a value
of the JSON, formatted with 4 significant digits), with figures embedded as base64 PNG and
the graph's interactive viewer (:mod:`graphs.viewer`) embedded as an ``<iframe srcdoc>``.
Both files are written all-or-nothing: the report directory is created and probed before
any work (:func:`check_writable`), both files are first written to temporary files in the
directory and only then moved into place; any failure removes what was written.
:func:`render` turns a report dictionary into the page.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

HTML_NAME, JSON_NAME = "atlas.html", "atlas.json"

_STYLE = """
body { font-family: sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 2px 7px; text-align: right; }
th { background: #f2f2f2; } td.l, th.l { text-align: left; }
img { max-width: 100%; } .note { color: #555; font-size: 0.9em; }
"""


def fmt(value: Any) -> str:
    """A number with 4 significant digits (ints exactly); other values as text."""
    if isinstance(value, bool) or value is None:
        return "—" if value is None else str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(fmt(v) for v in value)
    return str(value)


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """An HTML table of ``rows`` (dicts); text columns left-aligned."""
    if not rows:
        return "<p class='note'>(none)</p>"
    cols = list(columns or rows[0].keys())
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = []
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c)
            cls = " class='l'" if isinstance(v, str) else ""
            cells.append(f"<td{cls}>{html.escape(fmt(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def kv_table(mapping: Mapping[str, Any]) -> str:
    """A two-column table of a flat mapping (nested values are shown as JSON)."""
    rows = []
    for k, v in mapping.items():
        shown = json.dumps(v) if isinstance(v, dict) else v
        rows.append({"setting": k, "value": shown})
    return table(rows, ["setting", "value"])


def image(figures: Mapping[str, bytes], name: str, alt: str) -> str:
    """An ``<img>`` with the PNG ``figures[name]`` embedded (empty if there is none), followed
    by the interactive viewer when ``figures[name + "_viewer"]`` holds one (:func:`viewer_page`).
    """
    out = ""
    if name in figures:
        data = base64.b64encode(figures[name]).decode("ascii")
        out = f"<p><img alt='{html.escape(alt)}' src='data:image/png;base64,{data}'></p>"
    if f"{name}_viewer" in figures:
        out += viewer_iframe(figures[f"{name}_viewer"], f"interactive view: {alt}")
    return out


def viewer_page(
    graph: Any, partition: Any = None, labels: Mapping[str, Any] | None = None
) -> bytes:
    """The :mod:`graphs.viewer` page of ``graph`` (UTF-8), to store as ``figures["graph_viewer"]``
    so that :func:`image` embeds it below the graph's PNG."""
    from graphs.viewer import render_html

    return render_html(graph, partition, labels, title="interaction graph").encode("utf-8")


def viewer_iframe(page_html: bytes, title: str, height: int = 640) -> str:
    """An ``<iframe srcdoc>`` holding a self-contained viewer page (works offline, from disk)."""
    doc = html.escape(page_html.decode("utf-8"), quote=True)
    return (
        f"<p class='note'>Interactive graph: hover or click a node; the slider prunes edges.</p>"
        f"<iframe class='viewer' title='{html.escape(title, quote=True)}' srcdoc=\"{doc}\" "
        f"style='width:100%;height:{height}px;border:1px solid #ccc'></iframe>"
    )


def page(title: str, sections: Sequence[tuple[str, str]]) -> str:
    """A complete HTML document from ``(heading, html body)`` sections."""
    parts = [f"<h2>{html.escape(h)}</h2>\n{body}" for h, body in sections]
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>\n" + "\n".join(parts) + "\n</body></html>\n"
    )


def finite_json(value: Any) -> Any:
    """``value`` with NaN/Inf replaced by None (strict JSON) and tuples as lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value


def check_writable(out_dir: str | os.PathLike[str]) -> Path:
    """Create ``out_dir`` and check a file can be written there; ``OSError`` naming it if not.

    A directory this call created is removed again when the check fails.
    """
    out = Path(out_dir)
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".atlas-probe.", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise OSError(
            f"report directory {out} is not writable ({err.strerror or err}); nothing was written"
        ) from err
    return out


def write_files(
    out_dir: str | os.PathLike[str], html_text: str, report: Mapping[str, Any]
) -> tuple[Path, Path]:
    """Write ``atlas.html`` and ``atlas.json`` into ``out_dir``, both or neither.

    Raises
    ------
    OSError
        When the directory cannot be created or written (nothing is left behind).
    ValueError, TypeError
        When ``report`` is not JSON-serialisable (nothing is left behind).
    """
    json_text = json.dumps(finite_json(report), indent=1, allow_nan=False) + "\n"
    out = check_writable(out_dir)
    targets = [(out / JSON_NAME, json_text), (out / HTML_NAME, html_text)]
    mask = os.umask(0)
    os.umask(mask)
    temps: list[Path] = []
    placed: list[Path] = []
    try:
        for target, text in targets:
            fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=out)
            temps.append(Path(name))
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(name, 0o666 & ~mask)  # mkstemp's 0600 -> what open() would give
        for tmp, (target, _) in zip(temps, targets, strict=True):
            os.replace(tmp, target)
            placed.append(target)
    except BaseException:
        for path in temps + placed:
            path.unlink(missing_ok=True)
        raise
    return out / HTML_NAME, out / JSON_NAME


def _hessian_html(h: dict[str, Any], figures: dict[str, bytes]) -> str:
    out = f"<p class='note'>graph stages: {'; '.join(h['stages']) or 'none'}</p>"
    full = h["full"]
    out += f"<h3>Top eigenvectors of the full Hessian ({h['method']})</h3>"
    out += table(full["rows"]) + image(figures, "hessian", "Hessian shares")
    out += table(full["mass"] + [{"category": "sum of eigenvalues", "mass": full["sum_lambda"]}])
    block = h["block"]
    if block:
        out += f"<h3>Hessian block of the graph stages ({block['method']})</h3>"
        keys = ("n_params", "trace", "floor", "zero_count", "zero_invisible")
        out += table([{k: block[k] for k in keys if k in block}])
        out += table(block["rows"]) + image(figures, "block", "block shares")
        out += table(
            block["mass"] + [{"category": "sum of eigenvalues", "mass": block["sum_lambda"]}]
        )
    null = h["null_space"]
    out += "<h3>Null space of the behavioural-loss Hessian</h3>"
    if "note" in null:
        sizes = {k: null[k] for k in ("n_params", "max_dense")}
        return out + f"<p class='note'>{null['note']}</p>" + table([sizes])
    shown = ("n_params", "nullity", "largest_zero", "smallest_nonzero", "union_dim")
    return (
        out + table([{k: null[k] for k in (*shown, "min_union_share")}]) + table(null["mechanisms"])
    )


def render(report: dict[str, Any], figures: dict[str, bytes]) -> str:
    """The HTML page of a report (every number on it is a value of ``report``)."""
    sec: list[tuple[str, str]] = [("Settings and seeds", kv_table(report["settings"]))]
    if "series" in report:
        s = report["series"]
        marks = ("checkpoints", "memorization_step", "grokking_step", "deep_dive_step")
        body = table([{k: s[k] for k in marks}]) + image(figures, "series", "series")
        sec.append(("Training run", body + table(s["rows"])))
    g = report["graph"]
    summary = ("graph_size", "n_modules", "unassigned", "stability", "d_lr")
    body = table([{k: g[k] for k in summary}]) + table(g["layers"])
    body += table([{"module": f"m{i}", "nodes": n} for i, n in enumerate(g["module_sizes"])])
    sec.append(("Interaction graph and modules", body + image(figures, "graph", "graph")))
    sec.append(("Hessian and the graph", _hessian_html(report["hessian"], figures)))
    d = report["dlr"]
    body = table(d["layers"]) + table(d["modules"]) + image(figures, "dlr", "D_LR")
    sec.append(("D_LR and the graph", body))
    e = report["edge"]
    body = f"<p class='note'>directions: {e['source']}; Fourier labels at {e['fourier_layer']}</p>"
    body += table(e["rows"]) + image(figures, "edge", "directions")
    if "controls" in e:
        body += table([e["controls"]])
    sec.append(("Parameter directions and the graph", body))
    return page(report.get("title", "interbasis atlas"), sec)
