"""Benchmark: the HTML viewer on 1 000 nodes and 50 000 edges in headless Chromium (issue 18).

Run:  python benchmarks/bench_viewer.py [--nodes 1000 --edges 50000 --frames 40]
      python benchmarks/bench_viewer.py --screenshot demo_out/graph.html docs/figures/viewer.png

Prints the page size, the Python write time, the page load time (navigation start until the
viewer is drawn, ``data-load-ms``) and the script's own start-up time; then, for ``--frames``
slider moves from 100 % to 5 % of the edge weight, measured inside the page with
``performance.now()``: the slider's event handler, the longest gap between animation frames
while the canvas is (progressively) redrawn — rasterising included, this is how long the page
can stall — and the time until the drawing is complete; and the script time per drawn chunk
while zooming. ``--screenshot HTML PNG`` instead saves a
screenshot of a viewer page with ``--select`` (a node id) selected (the docs figure).
Needs Playwright and Debian's /usr/bin/chromium (see tests/test_viewer.py).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from graphs import InteractionGraph, NodeLayer
from graphs.viewer import write_html

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update",
        "--disable-sync"]  # fmt: skip


def layered_graph(n_nodes: int, n_edges: int, n_layers: int = 4, k: int = 4) -> InteractionGraph:
    """``n_layers`` equal layers, ``n_edges`` lognormal edges, ``k`` planted modules."""
    rng = np.random.default_rng(0)
    width = n_nodes // n_layers
    layers = [
        NodeLayer(f"layer{i}", width, np.sort(rng.lognormal(size=width))[::-1],
                  np.zeros(width, bool), rng.random(width))
        for i in range(n_layers)
    ]  # fmt: skip
    edges = []
    for pair in range(n_layers - 1):
        per_pair = n_edges // (n_layers - 1) + (pair < n_edges % (n_layers - 1))
        e = np.zeros(width * width)
        e[rng.choice(width * width, per_pair, replace=False)] = rng.lognormal(size=per_pair)
        edges.append(e.reshape(width, width))
    g = InteractionGraph(layers, edges)
    return g.with_modules({nid: int(rng.integers(0, k)) for nid in g.node_ids()})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nodes", type=int, default=1000)
    p.add_argument("--edges", type=int, default=50_000)
    p.add_argument("--frames", type=int, default=40)
    p.add_argument("--screenshot", nargs=2, metavar=("HTML", "PNG"))
    p.add_argument("--select", default="blocks.0.ln2:1", help="node selected in the screenshot")
    args = p.parse_args()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 850})
        if args.screenshot:
            html, png = args.screenshot
            page.goto(Path(html).absolute().as_uri())
            page.wait_for_selector("#ib-viewer[data-ready='1']")
            page.fill("#ib-fraction", "0.9")
            page.evaluate("(id) => window.ibViewer.select(id)", args.select)
            page.screenshot(path=png)
            print(f"wrote {png}")
            browser.close()
            return
        g = layered_graph(args.nodes, args.edges)
        path = Path(tempfile.mkdtemp()) / "bench.html"
        t0 = time.perf_counter()
        write_html(g, path)
        t_write = time.perf_counter() - t0
        n_edges = sum(int(np.count_nonzero(e)) for e in g.edges)
        print(f"graph: {g.n_nodes} nodes, {n_edges} edges; page {path.stat().st_size / 1e6:.2f} MB,"
              f" written in {t_write:.2f} s")  # fmt: skip
        t0 = time.perf_counter()
        page.goto(path.as_uri())
        page.wait_for_selector("#ib-viewer[data-ready='1']", timeout=120_000)
        wall = time.perf_counter() - t0
        load = page.get_attribute("#ib-viewer", "data-load-ms")
        init = page.get_attribute("#ib-viewer", "data-init-ms")
        print(f"load: {load} ms from navigation start to first drawing ({init} ms of it in the "
              f"viewer script); {wall * 1e3:.0f} ms seen by Playwright")  # fmt: skip
        fractions = np.linspace(1.0, 0.05, args.frames).round(2).tolist()
        print(f"slider moves 100 % .. 5 % of the edge weight ({len(fractions)} moves), times in "
              "the page (performance.now; frames include rasterising the canvas):")  # fmt: skip
        page.evaluate("window.ibViewer.setFraction(1.0)")
        rows = np.array(
            page.evaluate(
                """async (fs) => { const out = [], root = document.getElementById('ib-viewer');
                 const s = document.getElementById('ib-fraction');
                 const frame = () => new Promise((r) => requestAnimationFrame(() => r()));
                 for (const f of fs) { await frame(); s.value = f; const t0 = performance.now();
                   s.dispatchEvent(new Event('input'));
                   let last = performance.now(), worst = 0; const sync = last - t0;
                   while (root.dataset.drawing === '1') { await frame();
                     const now = performance.now();
                     worst = Math.max(worst, now - last); last = now; }
                   await frame(); worst = Math.max(worst, performance.now() - last);
                   out.push([sync, worst, performance.now() - t0]); }
                 return out; }""",
                fractions,
            )
        )
        for col, what in enumerate(("slider event handler", "longest frame", "until fully drawn")):
            print(
                f"{what}: median {np.median(rows[:, col]):.1f} ms, max {rows[:, col].max():.1f} ms"
            )
        page.evaluate("window.ibViewer.setFraction(1.0)")
        box = page.locator("#ib-plot").bounding_box()
        assert box is not None
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        before = page.evaluate("window.ibViewer.frameMs.length")
        for _ in range(args.frames):
            page.mouse.wheel(0, -120)
            page.evaluate("new Promise((r) => requestAnimationFrame(() => r()))")
        zoom = page.evaluate(f"window.ibViewer.frameMs.slice({before})")
        if zoom:
            med, top = np.median(zoom), np.max(zoom)
            print(f"zoom, script time per drawn chunk: median {med:.1f} ms, max {top:.1f} ms")
        browser.close()


if __name__ == "__main__":
    main()
