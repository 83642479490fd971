// interp circuit explorer. Data strings are inserted with textContent / setAttribute only.
(function () {
  "use strict";
  var SVGNS = "http://www.w3.org/2000/svg";
  var DATA = JSON.parse(document.getElementById("graph-data").textContent);
  var KIND_COLOR = { embed: "#999999", head: "#0072B2", mlp: "#E69F00", sae: "#009E73", resid: "#CC79A7", logits: "#555555" };
  var ROLE_COLOR = { facilitating: "#009E73", interfering: "#D55E00", irrelevant: "#BBBBBB" };
  var state = { search: "", nodeMin: 0, edgeMin: 0, methods: {}, selected: null };

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
  var KIND_ORDER = { head: 0, mlp: 1, resid: 2, sae: 3, embed: 4, logits: 5 };
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
  function xy(n) { return [LEFT + n._slot * DX + DX / 2, TOP + (maxLayer + 1 - n._row) * DY + DY / 2]; }

  var maxScore = 0, maxW = 0;
  nodes.forEach(function (n) { maxScore = Math.max(maxScore, Math.abs(n.score)); });
  edges.forEach(function (e) { maxW = Math.max(maxW, Math.abs(e.weight)); });

  // ------------------------------------------------------------------ header / controls
  var meta = DATA.meta || {};
  document.getElementById("title").textContent = meta.name ? "circuit: " + meta.name : "circuit";
  document.title = "interp explorer" + (meta.name ? " - " + meta.name : "");
  document.getElementById("subtitle").textContent = "model " + (meta.model || "?") + " - " + DATA.totals.nodes +
    " nodes, " + DATA.totals.edges + " edges";
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
  edges.forEach(function (e) {
    var s = byId[e.source], t = byId[e.target];
    if (!s || !t) { return; }
    var a = xy(s), b = xy(t), mx = (a[0] + b[0]) / 2 + (a[1] === b[1] ? 0 : 12), my = (a[1] + b[1]) / 2;
    var p = sv("path", { d: "M" + a[0] + "," + a[1] + " Q" + mx + "," + my + " " + b[0] + "," + b[1], "class": "edge" });
    var w = maxW > 0 ? Math.abs(e.weight) / maxW : 0;
    p.setAttribute("stroke", e.weight >= 0 ? "#2166ac" : "#b2182b");
    p.setAttribute("stroke-width", (0.4 + 4.6 * w).toFixed(2));
    p.setAttribute("stroke-opacity", (0.25 + 0.65 * w).toFixed(2));
    p.addEventListener("click", function () { select({ edge: e }); });
    var title = sv("title"); title.textContent = e.source + " -> " + e.target + " (" + e.method + " " + fmt(e.weight) + ")";
    p.appendChild(title);
    e._el = p; gEdges.appendChild(p);
  });
  nodes.forEach(function (n) {
    var c = xy(n), g = sv("g", { "class": "node", "data-id": n.id, transform: "translate(" + c[0] + "," + c[1] + ")" });
    var rad = 5 + 6 * (maxScore > 0 ? Math.abs(n.score) / maxScore : 0);
    var fill = n.roles.length && ROLE_COLOR[n.roles[0]] ? ROLE_COLOR[n.roles[0]] : (KIND_COLOR[n.kind] || "#888");
    var shape = n.kind === "mlp" || n.kind === "embed" || n.kind === "logits"
      ? sv("rect", { x: -rad, y: -rad * 0.7, width: 2 * rad, height: 1.4 * rad, fill: fill })
      : sv("circle", { r: rad, fill: fill });
    if (n.flags.indexOf("sink") >= 0) { shape.setAttribute("stroke-dasharray", "2,1"); }
    g.appendChild(sv("rect", { x: -DX / 2 + 1, y: -rad - 12, width: DX - 2, height: 2 * rad + 14, fill: "transparent", "class": "hit" }));
    g.appendChild(shape);
    var t = sv("text", { y: -rad - 2, "text-anchor": "middle" });
    t.textContent = n.kind === "head" ? "H" + n.head : (n.kind === "sae" ? "f" + n.feature : n.id);
    g.appendChild(t);
    var title = sv("title"); title.textContent = n.id + "  score " + fmt(n.score) + (n.roles.length ? "  " + n.roles.join(",") : "");
    g.appendChild(title);
    g.addEventListener("click", function () { select({ node: n }); });
    n._el = g; gNodes.appendChild(g);
  });

  function matches(n) {
    if (!state.search) { return false; }
    var hay = [n.id, n.kind].concat(n.roles, n.flags).join(" ").toLowerCase();
    return hay.indexOf(state.search) >= 0;
  }
  function nodeVisible(n) { return n.kind === "embed" || n.kind === "logits" || Math.abs(n.score) >= state.nodeMin; }
  function edgeVisible(e) {
    var ok = Object.keys(e.weights).some(function (m) { return state.methods[m]; });
    return ok && Math.abs(e.weight) >= state.edgeMin && nodeVisible(byId[e.source]) && nodeVisible(byId[e.target]);
  }
  function refresh() {
    var shownN = 0, shownE = 0;
    nodes.forEach(function (n) {
      var vis = nodeVisible(n);
      n._el.style.display = vis ? "" : "none";
      if (vis) { shownN++; }
      var cls = "node" + (matches(n) ? " match" : "") + (state.search && !matches(n) ? " dim" : "") +
        (state.selected === n ? " selected" : "");
      n._el.setAttribute("class", cls);
    });
    edges.forEach(function (e) {
      if (!e._el) { return; }
      var vis = edgeVisible(e);
      e._el.style.display = vis ? "" : "none";
      if (vis) { shownE++; }
      e._el.setAttribute("class", "edge" + (state.selected === e ? " selected" : ""));
    });
    document.getElementById("counts").textContent = "showing " + shownN + " nodes, " + shownE + " edges";
  }

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
  function select(what) {
    panel.textContent = "";
    if (what.node) {
      var n = what.node; state.selected = n;
      panel.appendChild(el("h2", { id: "panel-title" }, n.id));
      panel.appendChild(kvTable({ kind: n.kind, layer: n.layer, head: n.head, feature: n.feature, score: n.score }));
      if (Object.keys(n.scores).length) { panel.appendChild(el("h3", null, "scores")); panel.appendChild(kvTable(n.scores)); }
      if (n.roles.length) { panel.appendChild(tags(n.roles, "role")); }
      if (n.flags.length) { panel.appendChild(tags(n.flags, "flag")); }
      var li = (DATA.layers || {})[String(n.layer)];
      if (li && li.flags.length) { panel.appendChild(el("div", { "class": "hint" }, "layer flags: " + li.flags.join(", "))); }
      panel.appendChild(el("h3", null, "evidence"));
      panel.appendChild(evidenceBlock(n.evidence, n.n_evidence));
    } else if (what.edge) {
      var e = what.edge; state.selected = e;
      panel.appendChild(el("h2", { id: "panel-title" }, e.source + " -> " + e.target));
      panel.appendChild(kvTable({ method: e.method, weight: e.weight, result: e.result_id }));
      panel.appendChild(el("h3", null, "weights")); panel.appendChild(kvTable(e.weights));
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
  window.interpExplorer = { select: select, data: DATA };
  refresh();
})();
