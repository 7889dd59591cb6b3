"""The HTML viewer: its data (always) and the page in headless Chromium (Playwright).

The browser tests open the demo's ``graph.html`` from disk (written by ``interbasis demo``) and
compare what the page shows with the graph in Python. They skip, with the reason shown, only
where Playwright or Debian's ``/usr/bin/chromium`` is not installed.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from graphs import InteractionGraph, InvalidGraphError, NodeLayer, UnknownNodeError
from graphs.viewer import render_html, viewer_data, write_html

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update",
        "--disable-sync"]  # fmt: skip


def _graph(sizes: tuple[int, ...] = (4, 5, 3), seed: int = 0) -> InteractionGraph:
    rng = np.random.default_rng(seed)
    layers = []
    for k, n in enumerate(sizes):
        lam = np.sort(rng.random(n))[::-1].copy()
        lam[0] = np.nan
        layers.append(NodeLayer(f"l{k}", n, lam, np.arange(n) == 0, rng.random(n)))
    edges = []
    for a, b in itertools.pairwise(sizes):
        e = rng.random((b, a)) * (rng.random((b, a)) > 0.4)
        e[0, :], e[:, 0] = 0.0, 0.0
        edges.append(e)
    return InteractionGraph(layers, edges, {"title": "small"})


# ---------------------------------------------------------------------------- data (no browser)
def test_viewer_data_orders_edges_as_prune_does() -> None:
    g = _graph()
    data = viewer_data(g)
    assert data["nodes"]["id"] == g.node_ids() and data["nodes"]["lam"][0] is None
    for p, e in enumerate(g.edges):
        w = np.array(data["pairs"][p]["w"])
        assert (np.diff(w) <= 0).all() and (w > 0).all() and len(w) == np.count_nonzero(e)
        for f in (0.3, 0.75, 1.0):  # the viewer's rule: searchsorted(cumsum, f * total) + 1
            cum = np.cumsum(w)
            n_keep = min(int(np.searchsorted(cum, f * cum[-1], side="left")) + 1, len(w))
            assert n_keep == g.edges_needed(f)[p]


def test_render_html_is_self_contained_and_escapes_labels() -> None:
    g = _graph()
    page = render_html(g, labels={"l1:2": "</script><b>x"})
    assert "</script><b>x" not in page and "http://" not in page.replace(
        "http://www.w3.org/2000/svg", ""
    )
    blob = re.search(r'id="ib-data">(.*?)</script>', page, re.S)
    assert blob is not None and json.loads(blob[1])["nodes"]["label"][6] == "</script><b>x"


def test_viewer_errors(tmp_path: Path) -> None:
    g = _graph()
    with pytest.raises(UnknownNodeError, match="l9:0"):
        write_html(g, tmp_path / "a.html", labels={"l9:0": "x"})
    with pytest.raises(InvalidGraphError, match="fraction"):
        write_html(g, tmp_path / "a.html", fraction=0.0)
    with pytest.raises(InvalidGraphError, match="empty graph"):
        write_html(InteractionGraph([], []), tmp_path / "a.html")
    assert not (tmp_path / "a.html").exists()


# ---------------------------------------------------------------------------- browser
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install playwright)")
    if shutil.which(CHROMIUM) is None:
        pytest.skip(f"{CHROMIUM} not found (apt-get install -y chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from interbasis.cli import main

    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--out", str(out), "--quiet"]) == 0
    return out


def _open(browser: Any, path: Path) -> Any:
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(path.as_uri())
    page.wait_for_selector("#ib-viewer[data-ready='1']", timeout=60_000)
    assert errors == []
    return page


def _attr(page: Any, name: str) -> str:
    return str(page.get_attribute("#ib-viewer", f"data-{name}"))


def _kept(g: InteractionGraph, f: float, hidden: set[int]) -> int:
    """Edges of g.prune(f) whose two ends are in shown modules."""
    src, dst, _ = g.prune(f).edge_list()
    m = {nid: g.modules[li][i] for nid in g.node_ids() for li, i in [g.locate(nid)]}  # type: ignore[index]
    return sum(m[s] not in hidden and m[t] not in hidden for s, t in zip(src, dst, strict=True))


def test_demo_page_matches_the_graph(browser: Any, demo: Path, tmp_path: Path) -> None:
    from PIL import Image

    g = InteractionGraph.load(demo / "graph.npz")
    assert g.modules is not None
    page = _open(browser, demo / "graph.html")
    assert int(_attr(page, "rendered-nodes")) == g.n_nodes == page.locator(".ib-node").count()
    assert int(_attr(page, "visible-edges")) == sum(g.edges_needed(1.0))
    # click the largest-Λ node of blocks.0.ln2 (node 1; node 0 is the constant node)
    li = 1
    nid = f"{g.layers[li].name}:1"
    page.click(f"[data-id='{nid}']")
    assert page.text_content("#ib-node-id") == nid
    assert float(page.get_attribute("#ib-node-lambda", "data-value")) == g.layers[li].eigenvalues[1]
    assert int(page.get_attribute("#ib-node-module", "data-value")) == g.modules[li][1]
    assert (
        float(page.get_attribute("#ib-node-variance", "data-value"))
        == (g.layers[li].activation_variance[1])
    )
    strongest_in = f"{g.layers[0].name}:{int(np.argmax(g.edges[0][1]))}"
    assert page.get_attribute("#ib-in-edges li:first-child a", "data-node") == strongest_in
    page.click("#ib-in-edges li:first-child a")  # neighbour links navigate
    assert page.text_content("#ib-node-id") == strongest_in
    # the pruning slider
    for f in (0.5, 0.9, 0.2):
        page.fill("#ib-fraction", str(f))
        assert int(_attr(page, "visible-edges")) == sum(g.edges_needed(f)), f
    assert sum(g.edges_needed(0.2)) < sum(g.edges_needed(1.0))
    # the legend hides a module with its nodes and edges
    page.uncheck("#ib-legend input[data-module='0']")
    n0 = sum(int((m == 0).sum()) for m in g.modules)
    assert int(_attr(page, "rendered-nodes")) == g.n_nodes - n0
    assert int(_attr(page, "visible-edges")) == _kept(g, 0.2, {0})
    page.check("#ib-legend input[data-module='0']")
    # search by id
    page.fill("#ib-search", "unembed:3")
    page.press("#ib-search", "Enter")
    assert page.text_content("#ib-node-id") == "unembed:3"
    shot = tmp_path / "viewer.png"
    page.wait_for_selector("#ib-viewer[data-drawing='0']")
    page.screenshot(path=str(shot))
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.var() > 200, pixels.var()  # a blank page has variance ~0
    page.close()


def test_labels_are_shown_and_searchable(browser: Any, tmp_path: Path) -> None:
    g = _graph((3, 6, 4), seed=1).with_modules({"l1:1": 0, "l1:2": 0, "l2:3": 1})
    write_html(g, tmp_path / "g.html", labels={"l1:2": "k = 14", "l2:3": "k = 35"})
    page = _open(browser, tmp_path / "g.html")
    page.fill("#ib-search", "k = 35")
    assert page.locator("#ib-search-results a").count() == 1
    page.click("#ib-search-results a")
    assert page.text_content("#ib-node-label") == "k = 35"
    assert page.get_attribute("#ib-node-module", "data-value") == "1"
    page.close()


def test_large_graph_loads_and_prunes(browser: Any, tmp_path: Path) -> None:
    """1 000 nodes, 50 000 edges (timings: benchmarks/bench_viewer.py)."""
    rng = np.random.default_rng(0)
    sizes = [250, 250, 250, 250]
    layers = [NodeLayer(f"l{k}", n, rng.random(n), np.zeros(n, bool), rng.random(n))
              for k, n in enumerate(sizes)]  # fmt: skip
    edges = []
    for _ in range(3):
        e = rng.lognormal(size=(250, 250))
        e[rng.random((250, 250)) > 50_000 / 3 / 62_500] = 0.0
        edges.append(e)
    g = InteractionGraph(layers, edges)
    write_html(g, tmp_path / "big.html")
    page = _open(browser, tmp_path / "big.html")
    assert int(_attr(page, "rendered-nodes")) == 1000
    assert int(_attr(page, "visible-edges")) == sum(g.edges_needed(1.0))
    page.fill("#ib-fraction", "0.3")
    assert int(_attr(page, "visible-edges")) == sum(g.edges_needed(0.3))
    page.fill("#ib-fraction", "1")  # drawn in chunks, one per frame; it completes
    page.wait_for_selector("#ib-viewer[data-drawing='0']", timeout=60_000)
    page.close()


def test_atlas_report_embeds_the_viewer(browser: Any, tmp_path: Path) -> None:
    """report.image() puts the viewer (figures["graph_viewer"]) below the graph's PNG."""
    from interbasis.links.report import image, page, viewer_page

    g = _graph((3, 6, 4), seed=2)
    figures = {"graph": b"\x89PNG", "graph_viewer": viewer_page(g)}
    body = image(figures, "graph", "graph")
    assert body.count("<img") == 1 and body.count("<iframe") == 1
    assert image({"graph": b"\x89PNG"}, "graph", "graph").count("<iframe") == 0
    (tmp_path / "atlas.html").write_text(page("atlas", [("graph", body)]), encoding="utf-8")
    view = browser.new_page()
    view.goto((tmp_path / "atlas.html").as_uri())
    frame = view.frame_locator("iframe.viewer")
    frame.locator("#ib-viewer[data-ready='1']").wait_for(timeout=30_000)
    assert frame.locator("#ib-viewer").get_attribute("data-rendered-nodes") == str(g.n_nodes)
    view.close()
