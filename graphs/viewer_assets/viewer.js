/* interbasis graph viewer (written by graphs/viewer.py into one self-contained HTML file).
 *
 * Data: the JSON in <script id="ib-data"> (see graphs.viewer.viewer_data). Layers are columns,
 * node 0 on top; edges are drawn on a <canvas> (batched by colour and width), nodes are SVG
 * elements. Pruning keeps, per layer pair, the largest edges whose cumulative weight reaches
 * `fraction` of the pair's total: the rule of InteractionGraph.prune / edges_needed, computed
 * on the same float64 cumulative sums (edges arrive sorted by weight, descending, stable).
 * Large graphs are stroked in chunks of CHUNK edges, one chunk per animation frame, strongest
 * first, so the page never blocks for long. Test hooks: #ib-viewer[data-rendered-nodes|
 * data-visible-edges|data-fraction|data-load-ms|data-frame-ms|data-ready|data-drawing], the
 * side-panel fields #ib-node-* and window.ibViewer.
 */
(function () {
  "use strict";
  const t0 = performance.now();
  const $ = (id) => document.getElementById(id);
  const D = JSON.parse($("ib-data").textContent);
  const root = $("ib-viewer");
  const SVGNS = "http://www.w3.org/2000/svg";
  const TAB10 = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
    "#7f7f7f", "#bcbd22", "#17becf"];
  const TAB20 = ["#1f77b4", "#aec7e8", "#ff7f0e", "#ffbb78", "#2ca02c", "#98df8a", "#d62728",
    "#ff9896", "#9467bd", "#c5b0d5", "#8c564b", "#c49c94", "#e377c2", "#f7b6d2", "#7f7f7f",
    "#c7c7c7", "#bcbd22", "#dbdb8d", "#17becf", "#9edae5"];
  const GREY = "#b0b0b0", CHUNK = 4000, LEVELS = 8, MAX_LINE = 3.0, TOP = 34, BOTTOM = 12, SIDE = 60;
  const nodes = D.nodes, N = nodes.id.length, L = D.layers.length;
  const nMod = nodes.module.reduce((a, m) => Math.max(a, m), -1) + 1;
  const colour = (m) => (m < 0 ? GREY : nMod <= 10 ? TAB10[m] : nMod <= 20 ? TAB20[m]
    : "hsl(" + Math.round((360 * m) / nMod) + ",70%,48%)");
  const hidden = new Set();
  const byId = new Map(nodes.id.map((id, i) => [id, i]));

  // ------------------------------------------------------------ edges, cumulative weights
  const inE = Array.from({ length: N }, () => []), outE = Array.from({ length: N }, () => []);
  const pairs = D.pairs.map((p, pi) => {
    const n = p.w.length, cum = new Float64Array(n);
    let acc = 0;
    for (let k = 0; k < n; k++) {
      acc += p.w[k]; // sequential float64 sum, as numpy.cumsum
      cum[k] = acc;
      outE[p.s[k]].push([pi, k]);
      inE[p.t[k]].push([pi, k]);
    }
    return { s: p.s, t: p.t, w: p.w, cum: cum, max: n ? p.w[0] : 0, keep: n };
  });
  function keepCount(p, f) { // numpy: searchsorted(cum, f * total, "left") + 1, capped
    const cum = p.cum, n = cum.length;
    if (!n || !(cum[n - 1] > 0)) return 0;
    const target = f * cum[n - 1];
    let lo = 0, hi = n;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (cum[mid] < target) lo = mid + 1; else hi = mid;
    }
    return Math.min(lo + 1, n);
  }

  // ------------------------------------------------------------ layout
  const plot = $("ib-plot"), canvas = $("ib-canvas"), svg = $("ib-svg"), ctx = canvas.getContext("2d");
  const view = { k: 1, x: 0, y: 0 };
  const bx = new Float64Array(N), by = new Float64Array(N), sx = new Float64Array(N),
    sy = new Float64Array(N);
  const layerStart = [];
  let acc0 = 0;
  for (const layer of D.layers) { layerStart.push(acc0); acc0 += layer.size; }
  const lamMax = D.layers.map((layer, li) => {
    let m = 0;
    for (let i = 0; i < layer.size; i++) {
      const v = nodes.lam[layerStart[li] + i];
      if (v !== null && v > m) m = v;
    }
    return m;
  });
  let W = 0, H = 0;
  const gNodes = document.createElementNS(SVGNS, "g"), gTitles = document.createElementNS(SVGNS, "g");
  svg.append(gTitles, gNodes);
  const els = new Array(N);
  for (let i = 0; i < N; i++) {
    const el = document.createElementNS(SVGNS, nodes.constant[i] ? "rect" : "circle");
    el.setAttribute("class", "ib-node");
    el.setAttribute("fill", nodes.constant[i] ? "#ffffff" : colour(nodes.module[i]));
    el.dataset.id = nodes.id[i];
    el.dataset.i = i;
    gNodes.appendChild(el);
    els[i] = el;
  }
  const titles = D.layers.map((layer) => {
    const t = document.createElementNS(SVGNS, "text");
    t.setAttribute("class", "ib-layer-title");
    t.textContent = layer.name + " (" + layer.size + ")";
    gTitles.appendChild(t);
    return t;
  });

  function resize() {
    W = plot.clientWidth; H = plot.clientHeight;
    const dpr = window.devicePixelRatio || 1;
    canvas.width = Math.round(W * dpr); canvas.height = Math.round(H * dpr);
    canvas.style.width = W + "px"; canvas.style.height = H + "px";
    svg.setAttribute("width", W); svg.setAttribute("height", H);
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    D.layers.forEach((layer, li) => {
      const x = SIDE + (L === 1 ? 0.5 : li / (L - 1)) * Math.max(W - 2 * SIDE, 10);
      for (let i = 0; i < layer.size; i++) {
        bx[layerStart[li] + i] = x;
        by[layerStart[li] + i] = TOP + ((i + 0.5) / layer.size) * Math.max(H - TOP - BOTTOM, 10);
      }
    });
    place();
  }
  function place() { // screen positions and radii (area ∝ Λ / max Λ of the layer)
    for (let i = 0; i < N; i++) { sx[i] = bx[i] * view.k + view.x; sy[i] = by[i] * view.k + view.y; }
    D.layers.forEach((layer, li) => {
      const spacing = (Math.max(H - TOP - BOTTOM, 10) / Math.max(layer.size, 1)) * view.k;
      const rMax = Math.max(1.5, Math.min(14, 0.45 * spacing)), rMin = Math.min(1.2, rMax);
      for (let j = 0; j < layer.size; j++) {
        const i = layerStart[li] + j, el = els[i], lam = nodes.lam[i];
        const rel = lam !== null && lamMax[li] > 0 ? Math.sqrt(Math.max(lam, 0) / lamMax[li]) : 0;
        const r = rMin + (rMax - rMin) * rel;
        if (nodes.constant[i]) {
          el.setAttribute("x", sx[i] - rMin * 2); el.setAttribute("y", sy[i] - rMin * 2);
          el.setAttribute("width", rMin * 4); el.setAttribute("height", rMin * 4);
        } else {
          el.setAttribute("cx", sx[i]); el.setAttribute("cy", sy[i]); el.setAttribute("r", r);
        }
      }
      titles[li].setAttribute("x", bx[layerStart[li]] * view.k + view.x);
      titles[li].setAttribute("y", 18);
    });
  }

  // ------------------------------------------------------------ drawing
  let fraction = 1, selected = -1, shown = -1;
  const frameMs = [];
  const visibleNode = (i) => !hidden.has(nodes.module[i]);
  let generation = 0;
  function stroke(list, pi, from, to, buckets) { // bucket edges by colour and width level
    const p = pairs[pi];
    for (let j = from; j < to; j++) {
      const k = list[j], a = p.s[k], b = p.t[k];
      const m = nodes.module[a] === nodes.module[b] ? nodes.module[a] : -1;
      const key = (m + 1) * LEVELS + Math.min(LEVELS - 1, Math.floor((p.w[k] / p.max) * LEVELS));
      let bucket = buckets.get(key);
      if (!bucket) buckets.set(key, (bucket = []));
      bucket.push(pi, k);
    }
  }
  function draw() { // counts now; strokes in chunks of CHUNK edges, strongest first, per frame
    const f0 = performance.now(), gen = ++generation;
    ctx.clearRect(0, 0, W, H);
    const lists = pairs.map((p) => {
      const out = [];
      for (let k = 0; k < p.keep; k++) if (visibleNode(p.s[k]) && visibleNode(p.t[k])) out.push(k);
      return out;
    });
    const visible = lists.reduce((n, list) => n + list.length, 0);
    const nChunks = Math.max(1, Math.ceil(visible / CHUNK));
    let c = 0;
    function chunk() {
      if (gen !== generation) return; // a newer drawing started
      const t = performance.now(), buckets = new Map();
      lists.forEach((list, pi) => {
        const step = Math.ceil(list.length / nChunks);
        stroke(list, pi, c * step, Math.min(list.length, (c + 1) * step), buckets);
      });
      ctx.globalAlpha = 0.5;
      for (const [key, bucket] of buckets) {
        ctx.strokeStyle = colour(Math.floor(key / LEVELS) - 1);
        ctx.lineWidth = 0.3 + (MAX_LINE * ((key % LEVELS) + 0.5)) / LEVELS;
        ctx.beginPath();
        for (let j = 0; j < bucket.length; j += 2) {
          const p = pairs[bucket[j]], k = bucket[j + 1];
          ctx.moveTo(sx[p.s[k]], sy[p.s[k]]); ctx.lineTo(sx[p.t[k]], sy[p.t[k]]);
        }
        ctx.stroke();
      }
      if (++c < nChunks) requestAnimationFrame(chunk);
      else {
        if (selected >= 0) { // the selected node's kept edges on top
          ctx.globalAlpha = 0.9; ctx.strokeStyle = "#000"; ctx.lineWidth = 1.2; ctx.beginPath();
          for (const [pi, k] of inE[selected].concat(outE[selected])) {
            const p = pairs[pi];
            if (k < p.keep && visibleNode(p.s[k]) && visibleNode(p.t[k])) {
              ctx.moveTo(sx[p.s[k]], sy[p.s[k]]); ctx.lineTo(sx[p.t[k]], sy[p.t[k]]);
            }
          }
          ctx.stroke();
        }
        root.dataset.drawing = "0";
      }
      ctx.globalAlpha = 1;
      frameMs.push(performance.now() - t);
    }
    root.dataset.drawing = "1";
    root.dataset.visibleEdges = visible;
    $("ib-edge-count").textContent = visible + " edges shown";
    chunk();
    root.dataset.frameMs = (performance.now() - f0).toFixed(2);
  }
  let pending = false;
  function schedule() {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => { pending = false; place(); draw(); });
  }
  function setFraction(f) {
    fraction = f;
    pairs.forEach((p) => { p.keep = keepCount(p, f); });
    root.dataset.fraction = String(f);
    $("ib-fraction-value").textContent = (100 * f).toFixed(0) + " %";
    draw();
  }

  // ------------------------------------------------------------ side panel
  const num = (v) => (v === null ? "NaN" : Number(v.toPrecision(6)).toString());
  function setField(name, text, value) {
    const el = $("ib-node-" + name);
    el.textContent = text;
    el.dataset.value = value === undefined ? text : value;
  }
  function edgeList(olId, list, end) {
    const ol = $(olId);
    ol.textContent = "";
    for (const [pi, k] of list.slice(0, 10)) {
      const p = pairs[pi], other = end === "s" ? p.s[k] : p.t[k];
      const li = document.createElement("li"), a = document.createElement("a");
      a.textContent = nodes.id[other] + (nodes.label[other] ? " (" + nodes.label[other] + ")" : "");
      a.dataset.node = nodes.id[other];
      li.append(a, " E = " + num(p.w[k]));
      ol.appendChild(li);
    }
    $(olId + "-count").textContent = list.length + " edges, top " + Math.min(10, list.length) + ":";
  }
  function show(i) {
    shown = i;
    $("ib-details").style.display = i < 0 ? "none" : "";
    $("ib-hint").style.display = i < 0 ? "" : "none";
    if (i < 0) return;
    const lam = nodes.lam[i], v = nodes.variance[i], m = nodes.module[i];
    setField("id", nodes.id[i]);
    setField("layer", D.layers[nodes.layer[i]].name + " (column " + nodes.layer[i] + ")",
      D.layers[nodes.layer[i]].name);
    setField("lambda", num(lam) + (nodes.constant[i] ? " (constant node)" : ""),
      lam === null ? "NaN" : String(lam));
    setField("variance", num(v), v === null ? "NaN" : String(v));
    setField("module", m < 0 ? "none (-1)" : String(m), String(m));
    setField("label", nodes.label[i] || "—", nodes.label[i]);
    edgeList("ib-in-edges", inE[i], "s");
    edgeList("ib-out-edges", outE[i], "t");
  }
  function select(i) {
    if (selected >= 0) els[selected].classList.remove("ib-selected");
    selected = i;
    if (i >= 0) els[i].classList.add("ib-selected");
    root.dataset.selected = i >= 0 ? nodes.id[i] : "";
    show(i);
    draw();
  }
  $("ib-side").addEventListener("click", (ev) => {
    const a = ev.target.closest("a[data-node]");
    if (a) { ev.preventDefault(); select(byId.get(a.dataset.node)); }
  });

  // ------------------------------------------------------------ legend, search, slider
  const counts = new Map();
  nodes.module.forEach((m) => counts.set(m, (counts.get(m) || 0) + 1));
  for (const m of [...counts.keys()].sort((a, b) => a - b)) {
    const label = document.createElement("label"), box = document.createElement("input");
    const sw = document.createElement("span");
    box.type = "checkbox"; box.checked = true; box.dataset.module = m;
    sw.className = "ib-swatch"; sw.style.background = colour(m);
    label.append(box, sw, (m < 0 ? "no module / constant" : "module " + m) + " (" + counts.get(m) + ")");
    $("ib-legend").appendChild(label);
    box.addEventListener("change", () => {
      if (box.checked) hidden.delete(m); else hidden.add(m);
      let rendered = 0;
      for (let i = 0; i < N; i++) {
        const on = visibleNode(i);
        els[i].style.display = on ? "" : "none";
        rendered += on;
      }
      root.dataset.renderedNodes = rendered;
      draw();
    });
  }
  let matches = [];
  function search(q) {
    for (const i of matches) els[i].classList.remove("ib-match");
    const box = $("ib-search-results");
    box.textContent = "";
    q = q.trim().toLowerCase();
    matches = [];
    if (q) {
      for (let i = 0; i < N; i++) {
        if (nodes.id[i].toLowerCase() === q) matches.unshift(i);
        else if (nodes.id[i].toLowerCase().includes(q) || nodes.label[i].toLowerCase().includes(q)) {
          matches.push(i);
        }
      }
    }
    for (const i of matches) els[i].classList.add("ib-match");
    for (const i of matches.slice(0, 20)) {
      const a = document.createElement("a");
      a.dataset.node = nodes.id[i];
      a.textContent = nodes.id[i] + (nodes.label[i] ? " — " + nodes.label[i] : "");
      box.appendChild(a);
    }
    $("ib-search-count").textContent = q ? matches.length + " matches" : "";
  }
  $("ib-search").addEventListener("input", (ev) => search(ev.target.value));
  $("ib-search").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && matches.length) select(matches[0]);
  });
  $("ib-fraction").addEventListener("input", (ev) => setFraction(parseFloat(ev.target.value)));

  // ------------------------------------------------------------ mouse: hover, click, pan, zoom
  svg.addEventListener("mouseover", (ev) => {
    const i = ev.target.dataset ? ev.target.dataset.i : undefined;
    if (i !== undefined && selected < 0) show(Number(i));
  });
  let drag = null;
  plot.addEventListener("pointerdown", (ev) => {
    drag = { x: ev.clientX, y: ev.clientY, vx: view.x, vy: view.y, moved: false };
  });
  window.addEventListener("pointermove", (ev) => {
    if (!drag) return;
    const dx = ev.clientX - drag.x, dy = ev.clientY - drag.y;
    if (Math.abs(dx) + Math.abs(dy) > 3) drag.moved = true;
    if (drag.moved) { view.x = drag.vx + dx; view.y = drag.vy + dy; schedule(); }
  });
  window.addEventListener("pointerup", (ev) => {
    if (drag && !drag.moved) {
      const i = ev.target.dataset ? ev.target.dataset.i : undefined;
      select(i !== undefined ? Number(i) : -1);
    }
    drag = null;
  });
  plot.addEventListener("wheel", (ev) => {
    ev.preventDefault();
    const r = plot.getBoundingClientRect(), cx = ev.clientX - r.left, cy = ev.clientY - r.top;
    const k = Math.min(200, Math.max(0.5, view.k * Math.exp(-ev.deltaY * 0.0015)));
    view.x = cx - ((cx - view.x) * k) / view.k; view.y = cy - ((cy - view.y) * k) / view.k;
    view.k = k;
    schedule();
  }, { passive: false });
  $("ib-reset").addEventListener("click", () => { view.k = 1; view.x = 0; view.y = 0; schedule(); });
  window.addEventListener("resize", () => { resize(); draw(); });

  // ------------------------------------------------------------ start
  resize();
  const f = parseFloat($("ib-fraction").value);
  setFraction(f);
  show(-1);
  root.dataset.renderedNodes = N;
  root.dataset.loadMs = (performance.now()).toFixed(1); // since navigation start
  root.dataset.initMs = (performance.now() - t0).toFixed(1);
  root.dataset.ready = "1";
  window.ibViewer = {
    setFraction: setFraction, frameMs: frameMs, keepCount: keepCount,
    select: (id) => select(byId.has(id) ? byId.get(id) : -1),
    screenPosition: (id) => { const i = byId.get(id), r = svg.getBoundingClientRect();
      return { x: r.left + sx[i], y: r.top + sy[i] }; },
  };
})();
