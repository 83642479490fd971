// interp explorer: feature graphs (token x layer grid) and supernodes. Pure functions (no DOM) in FEATURES;
// under node, require() returns it (tests/test_explorer_js.py). Data strings never become HTML.
var FEATURES = (function () {
  "use strict";
  var FORMAT = "interp.supernodes/1";
  function superId(name) { return "SN:" + name; }
  // group nodes into supernodes: each supernode becomes one node (at the mean position of its members) and
  // every edge is redirected to the groups of its ends; parallel edges are summed, edges inside a group dropped
  function groupGraph(nodes, edges, supernodes) {
    var owner = {}, byId = {}, out = [];
    nodes.forEach(function (n) { byId[n.id] = n; });
    (supernodes || []).forEach(function (sn) {
      var members = sn.members.filter(function (m) { return byId[m]; });
      if (!members.length) { return; }
      var id = superId(sn.name), sx = 0, sy = 0, score = 0, nxy = 0;
      members.forEach(function (m) {
        owner[m] = id; var n = byId[m]; score += n.score || 0;
        if (n.xy) { sx += n.xy[0]; sy += n.xy[1]; nxy++; }
      });
      out.push({ id: id, kind: "supernode", name: sn.name, members: members, layer: -1, head: -1, feature: -1,
                 pos: -1, score: score, effect: score, effect_source: "sum of member scores", scores: {}, roles: [],
                 flags: [], evidence: [], n_evidence: 0, in_circuit: false, agreement: { n_methods: 0 },
                 xy: nxy ? [sx / nxy, sy / nxy] : null });
    });
    nodes.forEach(function (n) { if (!owner[n.id]) { out.push(n); } });
    var merged = {}, order = [];
    edges.forEach(function (e) {
      var s = owner[e.source] || e.source, t = owner[e.target] || e.target;
      if (s === e.source && t === e.target) { order.push(e); return; }
      if (s === t) { return; }
      var key = s + "\u0000" + t, m = merged[key];
      if (!m) {
        m = merged[key] = { source: s, target: t, weight: 0, effect: 0, weights: {}, method: e.method, rank: e.rank,
                            result_id: "", in_circuit: false, inputs: [], evidence: [], n_evidence: 0, parts: [] };
        order.push(m);
      }
      m.weight += e.weight; m.effect += e.effect; m.rank = Math.min(m.rank, e.rank);
      Object.keys(e.weights || {}).forEach(function (k) { m.weights[k] = (m.weights[k] || 0) + e.weights[k]; });
      m.in_circuit = m.in_circuit || e.in_circuit; m.parts.push([e.source, e.target, e.weight]);
    });
    return { nodes: out, edges: order, owner: owner };
  }
  // a new supernode from picked node ids; returns {ok, supernodes} or {ok: false, error}
  function addSupernode(supernodes, name, picked, nodeIds) {
    name = (name || "").trim();
    var taken = {};
    supernodes.forEach(function (sn) { sn.members.forEach(function (m) { taken[m] = sn.name; }); });
    if (!name) { return { ok: false, error: "give the supernode a name" }; }
    if (supernodes.some(function (sn) { return sn.name === name; })) { return { ok: false, error: "name already used: " + name }; }
    var members = picked.filter(function (m) { return nodeIds[m]; });
    if (members.length < 2) { return { ok: false, error: "pick at least two nodes (shift-click or 'pick' mode)" }; }
    var clash = members.filter(function (m) { return taken[m]; });
    if (clash.length) { return { ok: false, error: clash[0] + " is already in supernode " + taken[clash[0]] }; }
    return { ok: true, supernodes: supernodes.concat([{ name: name, members: members }]) };
  }
  // the object the download button writes (interp.explorer.supernodes.load_supernodes reads it)
  function supernodeFile(meta, supernodes) {
    return { format: FORMAT, graph: meta.name || "", model: meta.model || "", model_revision: meta.model_revision || "",
             supernodes: supernodes.map(function (sn) { return { name: sn.name, members: sn.members.slice() }; }) };
  }
  // check a loaded file against the page's nodes (the rules of check_supernodes); throws an Error with one line
  function parseSupernodeFile(obj, nodeIds, meta) {
    if (!obj || obj.format !== FORMAT) { throw new Error("not a supernode file (format " + (obj && obj.format) + ", expected " + FORMAT + ")"); }
    if (meta && meta.model && obj.model && obj.model !== meta.model) { throw new Error("supernodes of model " + obj.model + ", this graph is " + meta.model); }
    if (!Array.isArray(obj.supernodes)) { throw new Error("supernodes: expected a list"); }
    var out = [], owner = {};
    obj.supernodes.forEach(function (sn, i) {
      var where = "supernodes[" + i + "]";
      if (!sn || typeof sn.name !== "string" || !Array.isArray(sn.members)) { throw new Error(where + ": expected {name, members}"); }
      var name = sn.name.trim();
      if (!name) { throw new Error(where + ": empty name"); }
      if (out.some(function (o) { return o.name === name; })) { throw new Error(where + ": name " + name + " is used twice"); }
      if (!sn.members.length) { throw new Error(where + " " + name + ": no members"); }
      sn.members.forEach(function (m) {
        if (typeof m !== "string" || !nodeIds[m]) { throw new Error(where + " " + name + ": " + m + " is not a node of this graph"); }
        if (owner[m]) { throw new Error(where + " " + name + ": " + m + " is already in supernode " + owner[m]); }
        owner[m] = name;
      });
      out.push({ name: name, members: sn.members.slice() });
    });
    return out;
  }
  // grid position in pixels: x = token column, y = layer row (logits on top)
  function gridXY(xy, grid, box) {
    return [box.left + xy[0] * box.cw, box.top + (grid.n_layers + 1 - xy[1]) * box.dy + box.dy / 2];
  }
  // rows of a node's logit effects, largest |effect| first
  function logitEffects(ctx, id) {
    var node = ctx && ctx.nodes[id];
    if (!node) { return []; }
    return ctx.logits.map(function (lg, j) { return { token: lg.token, prob: lg.prob, effect: node.logit_effects[j] }; })
      .sort(function (a, b) { return Math.abs(b.effect) - Math.abs(a.effect); });
  }
  function featureKey(id) { return id.split("@")[0]; }
  return { groupGraph: groupGraph, addSupernode: addSupernode, supernodeFile: supernodeFile,
           parseSupernodeFile: parseSupernodeFile, gridXY: gridXY, logitEffects: logitEffects, featureKey: featureKey,
           superId: superId, FORMAT: FORMAT };
})();
if (typeof module === "object" && module.exports) { module.exports = FEATURES; }

// the page's feature-graph UI (DOM): the side panel of feature nodes and the supernode controls; `api` holds
// the explorer's state and helpers (explorer.js calls this once)
function FEATURE_UI(api) {
  "use strict";
  var DATA = api.DATA, GRID = api.GRID, CTX = api.CTX, state = api.state, panel = api.panel, el = api.el, fmt = api.fmt;
  var examples = api.examples, draw = api.draw, refresh = api.refresh, meta = api.meta;
  function featurePanel(n) {
    if (n.kind === "tc") {
      var ex = CTX.examples[FEATURES.featureKey(n.id)];
      panel.appendChild(el("h3", null, "top activating examples"));
      if (ex && ex.length) {
        panel.appendChild(el("div", { "class": "hint" }, CTX.examples_source));
        panel.appendChild(examples(ex));
      } else {
        panel.appendChild(el("p", { "class": "hint", id: "no-examples" }, "no dashboard examples embedded (pass examples= to " +
          "attribution_context): only the activations on this prompt are known"));
      }
      var acts = (CTX.nodes[n.id] || {}).prompt_acts || [];
      panel.appendChild(el("h3", null, "activations on this prompt"));
      var ul = el("ul", { "class": "examples prompt-acts" });
      acts.forEach(function (pa) { ul.appendChild(el("li", null, "pos " + pa[0] + " " + JSON.stringify(GRID.tokens[pa[0]]) + ": " + fmt(pa[1]))); });
      panel.appendChild(ul);
    }
    if (n.kind === "embed" && GRID) { panel.appendChild(el("p", null, "token " + JSON.stringify(GRID.tokens[n.pos]) + " at position " + n.pos)); }
    var rows = FEATURES.logitEffects(CTX, n.id);
    if (!rows.length) { return; }
    panel.appendChild(el("h3", null, "logit effects (direct effect on each top output logit" +
      (CTX.effects_from === "links" ? ", kept links only; 0 = pruned" : "") + ")"));
    var t = el("table", { "class": "ev logit-effects" }), hr = el("tr");
    ["token", "p", "direct effect"].forEach(function (c) { hr.appendChild(el("th", null, c)); }); t.appendChild(hr);
    rows.forEach(function (r) {
      var tr = el("tr"); tr.appendChild(el("td", null, JSON.stringify(r.token))); tr.appendChild(el("td", null, fmt(r.prob)));
      tr.appendChild(el("td", { "class": r.effect > 0 ? "pos" : (r.effect < 0 ? "neg" : "") }, fmt(r.effect))); t.appendChild(tr);
    });
    panel.appendChild(t);
  }
  function supernodePanel(n) {
    panel.appendChild(el("h3", null, "members (" + n.members.length + ")"));
    var ul = el("ul", { "class": "examples members" });
    n.members.forEach(function (m) { ul.appendChild(el("li", null, m)); });
    panel.appendChild(ul);
    var b = el("button", { type: "button", id: "super-ungroup" }, "ungroup");
    b.addEventListener("click", function () {
      state.supernodes = state.supernodes.filter(function (sn) { return sn.name !== n.name; });
      state.selected = null; panel.textContent = ""; draw(); refresh();
    });
    panel.appendChild(b);
  }
  var msg = document.getElementById("super-msg");
  function say(text, bad) { msg.textContent = text; msg.setAttribute("class", bad ? "warn" : "hint"); }
  function togglePick(id) {
    var i = state.picked.indexOf(id);
    if (i >= 0) { state.picked.splice(i, 1); } else { state.picked.push(id); }
    say(state.picked.length + " picked"); refresh();
  }
  var nodeIds = {};
  DATA.nodes.forEach(function (n) { nodeIds[n.id] = true; });
  if (GRID || state.supernodes.length) {
    document.getElementById("super-ctl").hidden = false;
    document.getElementById("pick-mode").addEventListener("change", function (ev) { state.pick = ev.target.checked; });
    document.getElementById("super-group").addEventListener("click", function () {
      var r = FEATURES.addSupernode(state.supernodes, document.getElementById("super-name").value, state.picked, nodeIds);
      if (!r.ok) { say(r.error, true); return; }
      state.supernodes = r.supernodes; state.picked = []; document.getElementById("super-name").value = "";
      say("grouped " + r.supernodes[r.supernodes.length - 1].members.length + " nodes"); draw(); refresh();
    });
    document.getElementById("super-save").addEventListener("click", function () {
      var text = JSON.stringify(FEATURES.supernodeFile(meta, state.supernodes), null, 1);
      var a = el("a", { href: URL.createObjectURL(new Blob([text], { type: "application/json" })),
                        download: String(meta.name || "graph").replace(/[^A-Za-z0-9_.-]+/g, "_").slice(0, 60) + ".supernodes.json" });
      document.body.appendChild(a); a.click(); a.remove();
    });
    document.getElementById("super-load").addEventListener("change", function (ev) {
      var f = ev.target.files[0];
      if (!f) { return; }
      var rd = new FileReader();
      rd.onload = function () {
        try { state.supernodes = FEATURES.parseSupernodeFile(JSON.parse(String(rd.result)), nodeIds, meta); }
        catch (err) { say(f.name + ": " + err.message, true); return; }
        state.picked = []; say("loaded " + state.supernodes.length + " supernodes"); draw(); refresh();
      };
      rd.readAsText(f);
    });
  }
  return { featurePanel: featurePanel, supernodePanel: supernodePanel, togglePick: togglePick };
}
