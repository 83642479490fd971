// interp circuit explorer. Data strings are inserted with textContent / setAttribute only.
// CORE holds the pure functions (no DOM); under node, require() returns it (tests/test_explorer_js.py).
var CORE = (function () {
  "use strict";
  // diverging colour: blue (#2166ac) for v > 0, red (#b2182b) for v < 0, white at 0, full at |v| >= lim
  function divergingColor(v, lim) {
    var x = lim > 0 ? Math.max(-1, Math.min(1, v / lim)) : 0, a = Math.abs(x);
    var end = x >= 0 ? [33, 102, 172] : [178, 24, 43];
    var c = end.map(function (e) { return Math.round(255 + a * (e - 255)); });
    return "rgb(" + c[0] + "," + c[1] + "," + c[2] + ")";
  }
  // the edges of rank < k are shown (circuit edges have the smallest ranks)
  function edgeShown(e, k) { return e.rank < k; }
  function clampK(view, k) { return Math.max(view.min, Math.min(view.max, Math.round(k))); }
  // nodes shown at edge count k: every node without a circuit or in the "all" view; else circuit nodes and
  // the ends of shown edges
  function shownNodeIds(data, k, all) {
    var out = {};
    data.nodes.forEach(function (n) { if (!data.circuit || all || n.in_circuit) { out[n.id] = true; } });
    data.edges.forEach(function (e) { if (edgeShown(e, k)) { out[e.source] = true; out[e.target] = true; } });
    return out;
  }
  // the agreement badge of a node: null below two comparable methods
  function badge(ag) {
    if (!ag || ag.n_methods < 2) { return null; }
    return { text: ag.n_top + "/" + ag.n_methods, cls: ag.sign === "disagree" ? "disagree" : "agree" };
  }
  function finite(v) { return typeof v === "number" && isFinite(v); }
  function fmtN(n) { return n >= 1000 ? (n / 1000) + "k" : String(n); }
  // geometry of the faithfulness curve: x = log(1 + n_edges), y = faithfulness; box {w, h, l, r, t, b}
  function curveGeometry(curve, box) {
    var rows = curve.rows.slice().sort(function (a, b) { return a.n_edges - b.n_edges; });
    var maxN = Math.max(1, curve.chosen || 0);
    var ys = [0, 1];
    rows.forEach(function (r) {
      maxN = Math.max(maxN, r.n_edges);
      ["faithfulness", "complement", "random_mean"].forEach(function (c) { if (finite(r[c])) { ys.push(r[c]); } });
      if (finite(r.random_mean) && finite(r.random_std)) { ys.push(r.random_mean - r.random_std, r.random_mean + r.random_std); }
    });
    var y0 = Math.min.apply(null, ys), y1 = Math.max.apply(null, ys);
    var X0 = box.l, X1 = box.w - box.r, Y0 = box.h - box.b, Y1 = box.t, lx = Math.log(1 + maxN);
    function x(n) { return X0 + (X1 - X0) * Math.log(1 + n) / lx; }
    function y(v) { return Y0 + (Y1 - Y0) * (v - y0) / (y1 - y0); }
    function r2(v) { return Math.round(v * 100) / 100; }
    function path(list, col) {
      var d = "", pen = false, pts = 0;
      list.forEach(function (r) {
        if (!finite(r[col])) { pen = false; return; }
        d += (pen ? " L" : (d ? " M" : "M")) + r2(x(r.n_edges)) + "," + r2(y(r[col])); pen = true; pts++;
      });
      return { d: d, points: pts };
    }
    var groups = {}, order = [];
    rows.forEach(function (r) {
      var key = [r.method, r.selection].filter(function (s) { return s !== undefined && s !== null; }).join(" / ") || "circuit";
      if (!groups[key]) { groups[key] = []; order.push(key); }
      groups[key].push(r);
    });
    var series = [];
    order.forEach(function (key, i) {
      var g = groups[key], band = g.filter(function (r) { return finite(r.random_mean) && finite(r.random_std); });
      var f = path(g, "faithfulness"); f.name = key; f.kind = "faithfulness"; f.index = i; series.push(f);
      var rm = path(g, "random_mean"); if (rm.points) { rm.name = "random mean"; rm.kind = "random"; rm.index = i; series.push(rm); }
      var cm = path(g, "complement"); if (cm.points) { cm.name = "complement"; cm.kind = "complement"; cm.index = i; series.push(cm); }
      if (band.length) {
        var up = band.map(function (r) { return r2(x(r.n_edges)) + "," + r2(y(r.random_mean + r.random_std)); });
        var lo = band.slice().reverse().map(function (r) { return r2(x(r.n_edges)) + "," + r2(y(r.random_mean - r.random_std)); });
        series.push({ kind: "band", name: "random +/- std", index: i, d: "M" + up.join(" L") + " L" + lo.join(" L") + " Z", points: band.length });
      }
    });
    var xTicks = [{ n: 0, px: r2(x(0)), label: "0" }];
    for (var p = 1; p <= maxN; p *= 10) { xTicks.push({ n: p, px: r2(x(p)), label: fmtN(p) }); }
    var span = y1 - y0, step = span <= 1.5 ? 0.25 : (span <= 3 ? 0.5 : Math.pow(10, Math.floor(Math.log(span) / Math.LN10)));
    var yTicks = [];
    for (var v = Math.ceil(y0 / step - 1e-9) * step; v <= y1 + 1e-9; v += step) {
      var vv = Math.round(v * 1000) / 1000; yTicks.push({ v: vv, px: r2(y(vv)), label: String(vv) });
    }
    var marker = null;
    if (finite(curve.chosen)) {
      var at = rows.filter(function (r) { return r.n_edges === curve.chosen && finite(r.faithfulness); })[0];
      marker = { n: curve.chosen, px: r2(x(curve.chosen)), py: at ? r2(y(at.faithfulness)) : null,
                 faithfulness: at ? at.faithfulness : null };
    }
    return { series: series, xTicks: xTicks, yTicks: yTicks, marker: marker, x0: X0, x1: X1, y0px: Y0, y1px: Y1,
             yZero: r2(y(0)), yOne: r2(y(1)), domain: { y0: y0, y1: y1, maxN: maxN } };
  }
  return { divergingColor: divergingColor, edgeShown: edgeShown, clampK: clampK, shownNodeIds: shownNodeIds,
           badge: badge, curveGeometry: curveGeometry };
})();
if (typeof module === "object" && module.exports) { module.exports = CORE; }

(function () {
  "use strict";
  if (typeof document === "undefined" || !document.getElementById("graph-data")) { return; }
  var SVGNS = "http://www.w3.org/2000/svg";
  var DATA = JSON.parse(document.getElementById("graph-data").textContent);
  var KIND_COLOR = { embed: "#999999", head: "#0072B2", mlp: "#E69F00", sae: "#009E73", resid: "#CC79A7", logits: "#555555",
                     supernode: "#8e6bbf" };
  var ROLE_COLOR = { facilitating: "#1b9e77", interfering: "#e7298a", irrelevant: "#bbbbbb" };
  var CURVE_COLOR = ["#1f77b4", "#9467bd", "#8c564b", "#17becf"];
  var view = DATA.view || { min: DATA.edges.length, max: DATA.edges.length, default: DATA.edges.length };
  var state = { search: "", nodeMin: 0, edgeMin: 0, methods: {}, selected: null, k: view.default,
                all: !DATA.circuit, supernodes: (DATA.supernodes || []).slice(), picked: [], pick: false };
  var GRID = DATA.grid, CTX = DATA.attribution;

  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    if (attrs) { Object.keys(attrs).forEach(function (k) { e.setAttribute(k, String(attrs[k])); }); }
    if (text !== undefined && text !== null) { e.textContent = String(text); }
    return e;
  }
  function sv(tag, attrs) {
    var e = document.createElementNS(SVGNS, tag);
    Object.keys(attrs || {}).forEach(function (k) { e.setAttribute(k, String(attrs[k])); });
    return e;
  }
  function fmt(v) {
    if (typeof v === "number") { return Math.abs(v) >= 1000 || (v !== 0 && Math.abs(v) < 0.001) ? v.toExponential(2) : String(Math.round(v * 1000) / 1000); }
    if (v === null || v === undefined) { return ""; }
    if (typeof v === "object") { return JSON.stringify(v); }
    return String(v);
  }

  // ------------------------------------------------------------------ layout
  var nodes = DATA.nodes, edges = DATA.edges;
  var byId = {};
  nodes.forEach(function (n) { byId[n.id] = n; });
  var maxLayer = -1, maxHead = -1;
  nodes.forEach(function (n) { maxLayer = Math.max(maxLayer, n.layer); maxHead = Math.max(maxHead, n.head); });
  Object.keys(DATA.layers || {}).forEach(function (k) { maxLayer = Math.max(maxLayer, parseInt(k, 10)); });
  var nHeads = maxHead + 1;
  function rowOf(n) { return n.kind === "embed" ? -1 : (n.kind === "logits" ? maxLayer + 1 : n.layer); }
  var extra = {};  // row -> next free slot after heads and MLP
  var KIND_ORDER = { head: 0, mlp: 1, resid: 2, sae: 3, embed: 4, logits: 5, visual: 6 };
  var sorted = nodes.slice().sort(function (a, b) {
    return (KIND_ORDER[a.kind] - KIND_ORDER[b.kind]) || (a.layer - b.layer) || (a.head - b.head) || (a.feature - b.feature);
  });
  var maxSlot = Math.max(nHeads, 1);
  sorted.forEach(function (n) {
    var row = rowOf(n), slot;
    if (n.kind === "head") { slot = n.head; }
    else if (n.kind === "mlp") { slot = nHeads; }
    else if (n.kind === "embed" || n.kind === "logits") { slot = Math.floor(nHeads / 2); }
    else { if (extra[row] === undefined) { extra[row] = nHeads + 1; } slot = extra[row]++; }
    n._row = row; n._slot = slot; maxSlot = Math.max(maxSlot, slot + 1);
  });
  var DX = 34, DY = 30, LEFT = 60, TOP = 20;
  var nRows = maxLayer + 3;
  var W = LEFT + maxSlot * DX + 20, H = TOP + nRows * DY + 10;
  // feature graphs: x = token position (columns labelled with the prompt's tokens), y = layer
  var GBOX = null;
  if (GRID) {
    var cell = {}, maxCell = 1;
    nodes.forEach(function (n) { if (n.xy) { var k = n.xy[1] + "_" + n.pos; cell[k] = (cell[k] || 0) + 1; maxCell = Math.max(maxCell, cell[k]); } });
    maxLayer = GRID.n_layers - 1; nRows = maxLayer + 3;
    GBOX = { left: LEFT, top: TOP, cw: Math.max(48, 11 * (maxCell + 1)), dy: DY };
    W = LEFT + GRID.n_pos * GBOX.cw + 20; H = TOP + nRows * DY + 70;
  }
  function xy(n) {
    if (GBOX && n.xy) { return FEATURES.gridXY(n.xy, GRID, GBOX); }
    return [LEFT + n._slot * DX + DX / 2, TOP + (maxLayer + 1 - n._row) * DY + DY / 2];
  }

  var maxScore = 0, maxEffect = 0, maxW = 0;
  nodes.forEach(function (n) { maxScore = Math.max(maxScore, Math.abs(n.score)); maxEffect = Math.max(maxEffect, Math.abs(n.effect)); });
  edges.forEach(function (e) { maxW = Math.max(maxW, Math.abs(e.weight)); });

  // ------------------------------------------------------------------ header / controls
  var meta = DATA.meta || {};
  document.getElementById("title").textContent = meta.name ? "circuit: " + meta.name : "circuit";
  document.title = "interp explorer" + (meta.name ? " - " + meta.name : "");
  document.getElementById("subtitle").textContent = "model " + (meta.model || "?") + " - " + DATA.totals.nodes +
    " nodes, " + DATA.totals.edges + " edges";
  if (DATA.circuit) {
    var C = DATA.circuit;
    document.getElementById("circuit-info").textContent = "chosen circuit: " + C.n_edges + " graph edges" +
      (C.given === "edges" ? " (" + C.n_model_edges + " model edges)" : "") + ", " + C.n_heads + " heads, " + C.n_mlps + " MLPs";
  }
  if (GRID) {
    document.getElementById("legend").appendChild(el("span", { id: "feature-legend" }, "feature graph: x = token position, y = layer; " +
      "circle = transcoder feature (#index), dashed grey box = error node, bottom row = token embeddings, top row = output logits; " +
      "shift-click (or 'pick nodes') to pick nodes for a supernode"));
  }
  if (DATA.notice) { var nt = document.getElementById("notice"); nt.textContent = DATA.notice; nt.hidden = false; }
  var methods = {};
  edges.forEach(function (e) { Object.keys(e.weights).forEach(function (m) { methods[m] = true; }); methods[e.method] = true; });
  var mBox = document.getElementById("methods");
  Object.keys(methods).sort().forEach(function (m) {
    state.methods[m] = true;
    var lab = el("label"), cb = el("input", { type: "checkbox", "data-method": m });
    cb.checked = true;
    cb.addEventListener("change", function () { state.methods[m] = cb.checked; refresh(); });
    lab.appendChild(cb); lab.appendChild(document.createTextNode(" " + m)); mBox.appendChild(lab);
  });
  function slider(id, key, maxv) {
    var s = document.getElementById(id), out = document.getElementById(id + "-val");
    s.addEventListener("input", function () { state[key] = parseFloat(s.value) * maxv; out.textContent = fmt(state[key]); refresh(); });
  }
  slider("node-min", "nodeMin", maxScore);
  slider("edge-min", "edgeMin", maxW);
  document.getElementById("search").addEventListener("input", function (ev) { state.search = ev.target.value.trim().toLowerCase(); refresh(); });
  document.getElementById("search").addEventListener("keydown", function (ev) {
    if (ev.key === "Enter") { var m = nodes.filter(matches)[0]; if (m && state.search) { select({ node: m }); } }
  });
  // the view control: from the circuit's edges up to every edge, strongest first
  var kRange = document.getElementById("view-k"), kNum = document.getElementById("view-k-num");
  function setK(k, all) {
    state.k = CORE.clampK(view, k);
    state.all = all === undefined ? (state.k >= view.max && view.max > view.min) : all;
    kRange.value = String(state.k); kNum.value = String(state.k);
    refresh();
  }
  if (DATA.circuit) {
    document.getElementById("view-ctl").hidden = false;
    [kRange, kNum].forEach(function (inp) {
      inp.setAttribute("min", view.min); inp.setAttribute("max", view.max); inp.value = String(view.default);
      inp.addEventListener("input", function () { if (inp.value !== "") { setK(parseFloat(inp.value)); } });
    });
    document.getElementById("view-circuit").addEventListener("click", function () { setK(view.min, false); });
    document.getElementById("view-all").addEventListener("click", function () { setK(view.max, true); });
  }

  // ------------------------------------------------------------------ drawing
  var svg = document.getElementById("graph");
  var zoom = Math.max(1, Math.min(2.5, (document.getElementById("canvas-wrap").clientWidth - 10) / W));
  svg.setAttribute("width", Math.round(W * zoom)); svg.setAttribute("height", Math.round(H * zoom));
  svg.setAttribute("viewBox", "0 0 " + W + " " + H);
  var gGrid = sv("g"), gEdges = sv("g"), gNodes = sv("g");
  svg.appendChild(gGrid); svg.appendChild(gEdges); svg.appendChild(gNodes);
  for (var r = -1; r <= maxLayer + 1; r++) {
    var y = TOP + (maxLayer + 1 - r) * DY + DY / 2;
    gGrid.appendChild(sv("line", { x1: LEFT, x2: W - 10, y1: y, y2: y, "class": "grid" }));
    var label = sv("text", { x: 4, y: y + 3, "class": "layer-label" });
    var lname = r === -1 ? "embed" : (r === maxLayer + 1 ? "logits" : "L" + r);
    label.textContent = lname;
    var info = (DATA.layers || {})[String(r)];
    if (info && r >= 0 && r <= maxLayer) {
      if (info.flags.length) { label.setAttribute("class", "layer-label flagged"); label.textContent = lname + " *"; }
      (function (layer, inf) { label.addEventListener("click", function () { select({ layer: layer, info: inf }); }); })(r, info);
    }
    label.setAttribute("data-layer", r);
    gGrid.appendChild(label);
  }
  if (GRID) {
    for (var c = 0; c < GRID.n_pos; c++) {
      var cx = LEFT + c * GBOX.cw, ly = TOP + nRows * DY + 6;
      gGrid.appendChild(sv("line", { x1: cx, x2: cx, y1: TOP, y2: TOP + nRows * DY, "class": "grid" }));
      var tl = sv("text", { x: cx + GBOX.cw / 2, y: ly, "class": "col-label", "data-pos": c, "text-anchor": "end",
                            transform: "rotate(-40 " + (cx + GBOX.cw / 2) + " " + ly + ")" });
      tl.textContent = GRID.tokens[c];
      var tt = sv("title"); tt.textContent = "position " + c + ": " + JSON.stringify(GRID.tokens[c]); tl.appendChild(tt);
      gGrid.appendChild(tl);
    }
  }
  function logitToken(n) {
    var lg = CTX ? CTX.logits.filter(function (x) { return x.id === n.id; })[0] : null;
    return lg ? lg.token : "logit " + n.feature;
  }
  function nodeLabel(n) {
    if (n.kind === "supernode") { return n.name; }
    if (GRID && n.pos >= 0) {
      if (n.kind === "tc") { return "#" + n.feature; }
      if (n.kind === "mlp") { return "err"; }
      if (n.kind === "embed") { return GRID.tokens[n.pos]; }
      if (n.kind === "logits") { return logitToken(n); }
    }
    return n.kind === "head" ? "H" + n.head : (n.kind === "sae" ? "f" + n.feature : n.id);
  }
  function draw() {
  gEdges.textContent = ""; gNodes.textContent = "";
  var G = FEATURES.groupGraph(DATA.nodes, DATA.edges, state.supernodes);
  nodes = G.nodes; edges = G.edges; byId = {};
  nodes.forEach(function (n) { byId[n.id] = n; });
  // draw the strongest last so they sit on top
  edges.slice().reverse().forEach(function (e) {
    var s = byId[e.source], t = byId[e.target];
    if (!s || !t) { return; }
    var a = xy(s), b = xy(t), mx = (a[0] + b[0]) / 2 + (a[1] === b[1] ? 0 : 12), my = (a[1] + b[1]) / 2;
    var p = sv("path", { d: "M" + a[0] + "," + a[1] + " Q" + mx + "," + my + " " + b[0] + "," + b[1], "class": "edge" });
    var w = maxW > 0 ? Math.min(1, Math.abs(e.weight) / maxW) : 0;
    p.setAttribute("stroke", e.effect >= 0 ? "#2166ac" : "#b2182b");
    p.setAttribute("stroke-width", (0.4 + 4.6 * w).toFixed(2));
    p.setAttribute("stroke-opacity", (0.25 + 0.65 * w).toFixed(2));
    p.setAttribute("data-rank", e.rank);
    if (e.in_circuit) { p.setAttribute("data-circuit", "1"); }
    p.addEventListener("click", function () { select({ edge: e }); });
    var title = sv("title"); title.textContent = e.source + " -> " + e.target + " (" + e.method + " " + fmt(e.weight) + ")" +
      (e.in_circuit ? "  in circuit" + (e.inputs.length ? " via " + e.inputs.join(",") : "") : "");
    p.appendChild(title);
    e._el = p; gEdges.appendChild(p);
  });
  nodes.forEach(function (n) {
    var c = xy(n), g = sv("g", { "class": "node", "data-id": n.id, transform: "translate(" + c[0] + "," + c[1] + ")" });
    var ag = n.agreement || { n_methods: 0 };
    var scored = !!n.effect_source;
    var rad = n.kind === "supernode" ? 9 : 5 + 6 * (maxEffect > 0 ? Math.min(1, Math.abs(n.effect) / maxEffect) : 0);
    var fill = GRID && n.pos >= 0 && n.kind !== "tc" ? (n.kind === "mlp" ? "#d4d4d4" : KIND_COLOR[n.kind]) : (n.kind === "supernode" ? KIND_COLOR.supernode
      : (scored ? CORE.divergingColor(n.effect, maxEffect) : (KIND_COLOR[n.kind] || "#888")));
    var box = n.kind === "mlp" || n.kind === "embed" || n.kind === "logits" || n.kind === "supernode";
    var shape = box ? sv("rect", { x: -rad, y: -rad * 0.7, width: 2 * rad, height: 1.4 * rad, fill: fill })
      : sv("circle", { r: rad, fill: fill });
    if (n.flags.indexOf("sink") >= 0 || (GRID && n.kind === "mlp")) { shape.setAttribute("stroke-dasharray", "2,1"); }
    if (n.kind === "supernode") { shape.setAttribute("rx", 4); }
    g.appendChild(sv("rect", { x: -DX / 2 + 1, y: -rad - 12, width: DX - 2, height: 2 * rad + 14, fill: "transparent", "class": "hit" }));
    var role = n.roles.filter(function (x) { return ROLE_COLOR[x]; })[0];
    if (role) {
      var ring = sv("circle", { r: rad + 2.6, "class": "role-ring", "data-role": role });
      ring.style.stroke = ROLE_COLOR[role];   // a style: the stylesheet's node stroke would beat an attribute
      if (ag.role_conflict) { ring.setAttribute("stroke-dasharray", "3,2"); }
      g.appendChild(ring);
    }
    g.appendChild(shape);
    var t = sv("text", { y: -rad - 3, "text-anchor": "middle" });
    t.textContent = nodeLabel(n);
    g.appendChild(t);
    var bd = CORE.badge(ag);
    if (bd) {
      var bt = sv("text", { x: rad + 1, y: rad + 5, "class": "badge " + bd.cls });
      bt.textContent = bd.text; g.appendChild(bt);
    }
    var title = sv("title");
    title.textContent = n.id + "  effect " + fmt(n.effect) + (n.roles.length ? "  " + n.roles.join(",") : "") +
      (ag.n_methods ? "  methods: " + ag.sign + ", top-" + ag.top_k + " in " + ag.n_top + "/" + ag.n_methods : "") +
      (ag.role_conflict ? "  (role contradicts the methods' sign)" : "");
    g.appendChild(title);
    g.addEventListener("click", function (ev) {
      if ((ev.shiftKey || state.pick) && n.kind !== "supernode") { UI.togglePick(n.id); } else { select({ node: n }); }
    });
    n._el = g; gNodes.appendChild(g);
  });
  }
  draw();

  function matches(n) {
    if (!state.search) { return false; }
    var hay = [n.id, n.kind].concat(n.roles, n.flags).join(" ").toLowerCase();
    return hay.indexOf(state.search) >= 0;
  }
  var inView = {};
  function nodeVisible(n) {
    return !!inView[n.id] && (n.kind === "embed" || n.kind === "logits" || n.kind === "supernode" || Math.abs(n.score) >= state.nodeMin);
  }
  function edgeVisible(e) {
    var ok = Object.keys(e.weights).some(function (m) { return state.methods[m]; });
    return ok && CORE.edgeShown(e, state.k) && Math.abs(e.weight) >= state.edgeMin &&
      nodeVisible(byId[e.source]) && nodeVisible(byId[e.target]);
  }
  function refresh() {
    inView = CORE.shownNodeIds({ nodes: nodes, edges: edges, circuit: DATA.circuit }, state.k, state.all);
    var shownN = 0, shownE = 0;
    nodes.forEach(function (n) {
      var vis = nodeVisible(n);
      n._el.style.display = vis ? "" : "none";
      if (vis) { shownN++; }
      var cls = "node" + (matches(n) ? " match" : "") + (state.search && !matches(n) ? " dim" : "") +
        (state.selected === n ? " selected" : "") + (DATA.circuit && !n.in_circuit ? " outside" : "") +
        (state.picked.indexOf(n.id) >= 0 ? " picked" : "") + (n.kind === "supernode" ? " super" : "");
      n._el.setAttribute("class", cls);
    });
    edges.forEach(function (e) {
      if (!e._el) { return; }
      var vis = edgeVisible(e);
      e._el.style.display = vis ? "" : "none";
      if (vis) { shownE++; }
      e._el.setAttribute("class", "edge" + (state.selected === e ? " selected" : "") + (DATA.circuit && !e.in_circuit ? " extra" : ""));
    });
    document.getElementById("counts").textContent = "showing " + shownN + " nodes, " + shownE + " edges" +
      (DATA.circuit ? " (view: " + state.k + " of " + view.max + " edges, circuit " + view.min + ")" : "");
  }

  // ------------------------------------------------------------------ faithfulness curve
  function drawCurve(curve) {
    var boxEl = document.getElementById("curve-box");
    boxEl.hidden = false;
    boxEl.appendChild(el("h3", null, "faithfulness vs circuit size" + (typeof curve.auc === "number" ? "  (AUC " + fmt(curve.auc) + ")" : "")));
    var B = { w: 350, h: 210, l: 38, r: 10, t: 8, b: 34 };
    var G = CORE.curveGeometry(curve, B);
    var s = sv("svg", { width: B.w, height: B.h, viewBox: "0 0 " + B.w + " " + B.h, id: "curve" });
    s.appendChild(sv("line", { x1: G.x0, x2: G.x1, y1: G.yZero, y2: G.yZero, "class": "ref" }));
    s.appendChild(sv("line", { x1: G.x0, x2: G.x1, y1: G.yOne, y2: G.yOne, "class": "ref" }));
    s.appendChild(sv("line", { x1: G.x0, x2: G.x1, y1: G.y0px, y2: G.y0px, "class": "axis" }));
    s.appendChild(sv("line", { x1: G.x0, x2: G.x0, y1: G.y0px, y2: G.y1px, "class": "axis" }));
    G.xTicks.forEach(function (tk) {
      s.appendChild(sv("line", { x1: tk.px, x2: tk.px, y1: G.y0px, y2: G.y0px + 3, "class": "axis" }));
      var tx = sv("text", { x: tk.px, y: G.y0px + 12, "text-anchor": "middle" }); tx.textContent = tk.label; s.appendChild(tx);
    });
    G.yTicks.forEach(function (tk) {
      s.appendChild(sv("line", { x1: G.x0 - 3, x2: G.x0, y1: tk.px, y2: tk.px, "class": "axis" }));
      var tx = sv("text", { x: G.x0 - 5, y: tk.px + 3, "text-anchor": "end" }); tx.textContent = tk.label; s.appendChild(tx);
    });
    var xl = sv("text", { x: (G.x0 + G.x1) / 2, y: B.h - 4, "text-anchor": "middle", "class": "axis-label" });
    xl.textContent = "edges in circuit (log scale)"; s.appendChild(xl);
    var yl = sv("text", { x: 10, y: (G.y0px + G.y1px) / 2, "text-anchor": "middle", "class": "axis-label",
                          transform: "rotate(-90 10 " + (G.y0px + G.y1px) / 2 + ")" });
    yl.textContent = "faithfulness (1 = clean)"; s.appendChild(yl);
    var legend = el("div", { "class": "curve-legend" });
    function leg(name, color) { var sp = el("span"), i = el("i"); i.style.background = color; sp.appendChild(i); sp.appendChild(document.createTextNode(name)); legend.appendChild(sp); }
    var seen = {};
    G.series.forEach(function (se) {
      var st = { band: ["rgba(150,150,150,0.3)", "none", ""], random: ["none", "#777", "2,2"], complement: ["none", "#d62728", ""],
                 faithfulness: ["none", CURVE_COLOR[se.index % CURVE_COLOR.length], ""] }[se.kind];
      var p = sv("path", { d: se.d, fill: st[0], stroke: st[1], "stroke-width": se.kind === "faithfulness" ? 2 : 1.3,
                           "data-series": se.kind });
      if (st[2]) { p.setAttribute("stroke-dasharray", st[2]); }
      s.appendChild(p);
      var key = se.kind === "faithfulness" ? se.name : se.kind;
      if (!seen[key]) { seen[key] = true; leg(se.kind === "faithfulness" ? "faithfulness: " + se.name : se.name, st[0] !== "none" ? st[0] : st[1]); }
    });
    if (G.marker) {
      s.appendChild(sv("line", { x1: G.marker.px, x2: G.marker.px, y1: G.y0px, y2: G.y1px, stroke: "#000", "stroke-dasharray": "4,2", id: "curve-marker" }));
      if (G.marker.py !== null) { s.appendChild(sv("circle", { cx: G.marker.px, cy: G.marker.py, r: 4, fill: "#000" })); }
      leg("chosen circuit: " + G.marker.n + " edges" + (G.marker.faithfulness !== null ? ", faithfulness " + fmt(G.marker.faithfulness) : ""), "#000");
    }
    boxEl.appendChild(s);
    boxEl.appendChild(legend);
  }
  if (DATA.curve) { drawCurve(DATA.curve); }

  // ------------------------------------------------------------------ side panel
  var panel = document.getElementById("panel");
  function tags(list, cls) {
    var d = el("div");
    list.forEach(function (x) { d.appendChild(el("span", { "class": "tag " + cls }, x)); });
    return d;
  }
  function kvTable(obj) {
    var t = el("table", { "class": "ev" });
    Object.keys(obj).forEach(function (k) {
      var tr = el("tr"); tr.appendChild(el("th", null, k)); tr.appendChild(el("td", null, fmt(obj[k]))); t.appendChild(tr);
    });
    return t;
  }
  function color(v, lim) {
    var x = lim > 0 ? Math.max(-1, Math.min(1, v / lim)) : 0, a = Math.abs(x);
    var r = x >= 0 ? Math.round(255 - a * (255 - 33)) : 255, g = Math.round(255 - a * 160), b = x >= 0 ? 255 : Math.round(255 - a * 200);
    return "rgb(" + r + "," + g + "," + b + ")";
  }
  function heatmap(rows) {
    // rows with a numeric "value": one line per (method/direction/metric/domain...), one cell per pos (or row)
    var withV = rows.filter(function (r) { return typeof r.value === "number"; });
    if (withV.length < 2) { return null; }
    var keyCols = ["method", "direction", "metric", "domain", "dst_input", "src", "dst"].filter(function (c) { return withV[0][c] !== undefined; });
    var lines = {}, cols = {}, lim = 0;
    withV.forEach(function (r, i) {
      var k = keyCols.map(function (c) { return r[c]; }).join("/") || "value";
      var c = r.pos !== undefined ? r.pos : i;
      lines[k] = lines[k] || {}; lines[k][c] = r.value; cols[c] = true; lim = Math.max(lim, Math.abs(r.value));
    });
    var colKeys = Object.keys(cols).sort(function (a, b) { return parseFloat(a) - parseFloat(b); }).slice(0, 40);
    var grid = el("div", { "class": "heat" });
    grid.style.gridTemplateColumns = "max-content repeat(" + colKeys.length + ", 14px)";
    grid.appendChild(el("div", { "class": "lab" }, withV[0].pos !== undefined ? "pos" : ""));
    colKeys.forEach(function (c) { grid.appendChild(el("div", { "class": "lab" }, c === "-1" ? "all" : "")); });
    Object.keys(lines).slice(0, 20).forEach(function (k) {
      grid.appendChild(el("div", { "class": "lab" }, k));
      colKeys.forEach(function (c) {
        var v = lines[k][c], cell = el("div", { title: k + " pos " + c + ": " + fmt(v) });
        cell.style.background = v === undefined ? "#f7f7f7" : color(v, lim);
        grid.appendChild(cell);
      });
    });
    return grid;
  }
  function examples(rows) {
    var keys = ["top_tokens", "top_logits", "top_examples", "examples", "top_contexts"];
    var ul = null;
    rows.forEach(function (r) {
      if (typeof r.token === "string" && (Array.isArray(r.left) || Array.isArray(r.right))) {
        ul = ul || el("ul", { "class": "examples" });
        var li = el("li"), b = el("b", null, r.token);
        li.appendChild(document.createTextNode((r.left || []).join("")));
        li.appendChild(b);
        li.appendChild(document.createTextNode((r.right || []).join("") + (typeof r.value === "number" ? "  (" + fmt(r.value) + ")" : "")));
        ul.appendChild(li);
      }
      keys.forEach(function (k) {
        var v = r[k];
        if (v === undefined || v === null) { return; }
        ul = ul || el("ul", { "class": "examples" });
        (Array.isArray(v) ? v : [v]).slice(0, 10).forEach(function (x) { ul.appendChild(el("li", null, fmt(x))); });
      });
    });
    return ul;
  }
  function evidenceBlock(evidence, total) {
    var wrap = el("div", { "class": "evidence" });
    if (!evidence.length) { wrap.appendChild(el("p", { "class": "hint" }, "no evidence rows")); return wrap; }
    var groups = {};
    evidence.forEach(function (e) { (groups[e.result_id] = groups[e.result_id] || { kind: e.kind, rows: [] }).rows.push(e.row); });
    Object.keys(groups).forEach(function (rid) {
      var grp = groups[rid];
      wrap.appendChild(el("h3", null, grp.kind + "  (" + rid + ", " + grp.rows.length + " rows)"));
      var hm = heatmap(grp.rows); if (hm) { wrap.appendChild(hm); }
      var ex = examples(grp.rows); if (ex) { wrap.appendChild(el("div", { "class": "hint" }, "top examples")); wrap.appendChild(ex); }
      var cols = [];
      grp.rows.forEach(function (r) { Object.keys(r).forEach(function (c) { if (cols.indexOf(c) < 0) { cols.push(c); } }); });
      var t = el("table", { "class": "ev" }), hr = el("tr");
      cols.forEach(function (c) { hr.appendChild(el("th", null, c)); }); t.appendChild(hr);
      grp.rows.slice(0, 50).forEach(function (r) {
        var tr = el("tr"); cols.forEach(function (c) { tr.appendChild(el("td", null, fmt(r[c]))); }); t.appendChild(tr);
      });
      wrap.appendChild(t);
    });
    if (total > evidence.length) { wrap.appendChild(el("p", { "class": "hint" }, (total - evidence.length) + " more rows not embedded")); }
    return wrap;
  }
  function agreementBlock(ag) {
    var wrap = el("div", { "class": "agreement" });
    if (!ag || !ag.n_methods) { return wrap; }
    var summary = ag.sign === "single" ? "one method scores it" : (ag.sign === "agree" ? "methods agree on sign" : "methods DISAGREE on sign");
    wrap.appendChild(el("div", { "class": ag.sign === "disagree" ? "warn" : "hint" },
      summary + "; top-" + ag.top_k + " in " + ag.n_top + " of " + ag.n_methods));
    if (ag.role_conflict) { wrap.appendChild(el("div", { "class": "warn" }, "gating role contradicts the methods' majority sign")); }
    var t = el("table", { "class": "ev agree" }), hr = el("tr");
    ["source", "effect (+ = supports clean)", "rank", "top"].forEach(function (c) { hr.appendChild(el("th", null, c)); });
    t.appendChild(hr);
    ag.methods.forEach(function (m) {
      var tr = el("tr");
      tr.appendChild(el("td", null, m.source));
      tr.appendChild(el("td", { "class": m.value > 0 ? "pos" : (m.value < 0 ? "neg" : "") }, fmt(m.value)));
      tr.appendChild(el("td", null, m.rank));
      tr.appendChild(el("td", null, m.top ? "yes" : ""));
      t.appendChild(tr);
    });
    wrap.appendChild(t);
    return wrap;
  }
  function select(what) {
    panel.textContent = "";
    if (what.node) {
      var n = what.node; state.selected = n;
      panel.appendChild(el("h2", { id: "panel-title" }, n.id));
      panel.appendChild(kvTable(GRID && n.pos >= 0 ? { kind: n.kind === "mlp" ? "error (transcoder residual)" : n.kind, layer: n.layer,
                                  feature: n.feature, position: n.pos, token: GRID.tokens[n.pos], score: n.score, "score of": n.effect_source }
        : { kind: n.kind, layer: n.layer, head: n.head, feature: n.feature, score: n.score,
            effect: n.effect_source ? n.effect : "", "effect of": n.effect_source, "in circuit": DATA.circuit ? (n.in_circuit ? "yes" : "no") : "" }));
      if (n.roles.length) { panel.appendChild(tags(n.roles, "role")); }
      if (n.flags.length) { panel.appendChild(tags(n.flags, "flag")); }
      if (n.agreement && n.agreement.n_methods) { panel.appendChild(el("h3", null, "method agreement")); panel.appendChild(agreementBlock(n.agreement)); }
      if (Object.keys(n.scores).length) { panel.appendChild(el("h3", null, "scores")); panel.appendChild(kvTable(n.scores)); }
      var li = (DATA.layers || {})[String(n.layer)];
      if (li && li.flags.length) { panel.appendChild(el("div", { "class": "hint" }, "layer flags: " + li.flags.join(", "))); }
      if (CTX) { UI.featurePanel(n); }
      if (n.kind === "supernode") { UI.supernodePanel(n); } else {
        panel.appendChild(el("h3", null, "evidence"));
        panel.appendChild(evidenceBlock(n.evidence, n.n_evidence));
      }
    } else if (what.edge) {
      var e = what.edge; state.selected = e;
      panel.appendChild(el("h2", { id: "panel-title" }, e.source + " -> " + e.target));
      panel.appendChild(kvTable({ method: e.method, weight: e.weight, result: e.result_id, rank: e.rank,
                                  "in circuit": e.in_circuit ? "yes" + (e.inputs.length ? " (" + e.inputs.join(", ") + ")" : "") : "no" }));
      panel.appendChild(el("h3", null, "weights")); panel.appendChild(kvTable(e.weights));
      if (e.parts) { panel.appendChild(el("h3", null, "sum of " + e.parts.length + " member edges")); panel.appendChild(kvTable(e.parts.reduce(function (o, q) { o[q[0] + " -> " + q[1]] = q[2]; return o; }, {}))); }
      panel.appendChild(el("h3", null, "evidence"));
      panel.appendChild(evidenceBlock(e.evidence, e.n_evidence));
    } else if (what.layer !== undefined) {
      state.selected = null;
      panel.appendChild(el("h2", { id: "panel-title" }, "layer " + what.layer));
      panel.appendChild(tags(what.info.flags, "flag"));
      panel.appendChild(evidenceBlock(what.info.evidence, what.info.evidence.length));
    }
    refresh();
  }
  // feature graphs: the side panel of feature nodes and the supernode controls (features.js)
  var UI = FEATURE_UI({ DATA: DATA, GRID: GRID, CTX: CTX, state: state, panel: panel, el: el, fmt: fmt, examples: examples,
                        draw: draw, refresh: refresh, meta: meta });
  window.interpExplorer = { select: select, data: DATA, setK: setK, state: state, draw: draw, refresh: refresh };
  refresh();
})();
