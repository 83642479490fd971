"""The explorer page in a real headless Chromium (Debian's ``chromium`` driven by Playwright).

Setup (done by setup.sh / CI): ``apt-get install -y chromium`` and
``pip install playwright -c constraints.txt`` (never ``playwright install``: we use the
system browser at /usr/bin/chromium, offline).
"""

from __future__ import annotations

import os
import shutil

import pandas as pd
import pytest

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("INTERP_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
XSS = ['<script>window.__xss = 1</script>', '<img src=x onerror="window.__xss = 2">',
       '</script><script>window.__xss = 3</script>', "<svg onload=window.__xss=4>", "a & b <b>bold</b>"]


@pytest.fixture(scope="module")
def browser():
    if not (os.path.exists(CHROMIUM) or shutil.which("chromium")):
        pytest.skip("Debian chromium not installed (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright -c constraints.txt")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


def _open(browser, path):
    page = browser.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(path.as_uri())
    page.wait_for_selector("svg#graph g.node, #panel")
    return page, errors, requests


def _evidence(rows, **fill):
    """Effect rows in the evidence vocabulary (reference 0, so effect = value)."""
    return pd.DataFrame([{**fill, **r, "reference": "corrupted", "reference_value": 0.0, "effect": r["value"]}
                         for r in rows])


def _graph():
    from interp.graph import CircuitGraph
    from interp.results import Result, RunMeta

    meta = RunMeta(model="toy:llama", model_revision="r1")
    nodes = Result("patching.nodes", _evidence([
        dict(method="atp", direction="denoising", metric="logit_diff", component="head", site="z", layer=l, head=h,
             pos=p, pos_label=str(p), node=f"L{l}.H{h}", value=0.1 * (l + 1) * (h + 1) - 0.05 * p)
        for l in range(2) for h in range(4) for p in (-1, 0, 1, 2)]), meta)
    edges = Result("patching.edges", _evidence([
        dict(method=m, src=f"L0.H{h}", dst="L1.H2", dst_input="q", value=0.3 * (h + 1)) for h in range(4)
        for m in ("eap", "path")] + [dict(method="eap", src="L1.H2", dst="LOGITS", dst_input="logits", value=1.0)],
        direction="denoising", metric="logit_diff"), meta)
    chg = Result("gating.chg", pd.DataFrame([dict(layer=1, head=2, node="L1.H2", g_plus=0.9, g_minus=0.8,
                                                  facilitation=0.8, interference=0.1, irrelevance=0.1,
                                                  role="facilitating")]), meta)
    feats = Result("sae.features", pd.DataFrame([dict(feature=7, layer=1, site="resid_post.1", density=0.01,
                                                      max_act=3.0, mean_act=1.0, top_tokens=XSS)]), meta)
    dfa = Result("sae.dfa", pd.DataFrame([dict(feature=7, layer=1, head=2, node="L1.H2", value=0.5, src="L1.H2",
                                               dst="L1.SAE.7", share=1.0, n_active=2)]), meta)
    examples = Result("sae.examples", pd.DataFrame([dict(feature=7, layer=1, rank=i, row=i, pos=3, value=2.0 - i,
                                                          token=XSS[i], left=[XSS[3], " the"], right=[XSS[4]])
                                                     for i in range(2)]), meta)
    g = CircuitGraph(name=XSS[0] + XSS[1])
    for r in (nodes, edges, chg, dfa, feats, examples):
        g.add_result(r)
    g.add_node("L0.MLP", score=0.2, roles=[XSS[2]], flags=[XSS[1]],
               evidence=[{"result_id": XSS[3], "kind": "demo", "row": {"token": XSS[2], "value": 1.0}}])
    return g


def test_page_loads_offline_shows_all_nodes_and_evidence(browser, tmp_path):
    g = _graph()
    path = g.to_html(tmp_path / "graph.html")
    page, errors, requests = _open(browser, path)
    assert page.locator("svg#graph g.node").count() == len(g) == 11
    assert page.locator("svg#graph path.edge").count() == g.nx.number_of_edges()
    # offline and self-contained: the only request is the file itself
    assert [u for u in requests if not u.startswith("file:")] == []
    assert errors == []
    # clicking a node shows its evidence: rows of each Result, with values
    page.locator('svg#graph g.node[data-id="L1.H2"]').click()
    assert page.locator("#panel-title").text_content() == "L1.H2"
    panel = page.locator("#panel").text_content()
    assert "patching.nodes" in panel and "gating.chg" in panel and "facilitating" in panel
    assert page.locator("#panel .heat div[title]").count() >= 4   # mini heatmap of pos x method
    # SAE feature: top examples listed as text
    page.locator('svg#graph g.node[data-id="L1.SAE.7"]').click()
    assert page.locator("#panel ul.examples li").count() == len(XSS) + 2
    assert page.locator("#panel ul.examples li b").first.text_content() == XSS[0]   # token in its context
    # method filter hides the 'path'-only view: uncheck eap -> edges carrying only eap disappear
    page.locator('#methods input[data-method="eap"]').uncheck()
    page.locator('#methods input[data-method="dfa"]').uncheck()
    visible = page.locator("svg#graph path.edge:visible").count()
    assert visible == 4    # the four edges that also have a path-patching weight
    # search highlights
    page.fill("#search", "facilitating")
    assert page.locator("svg#graph g.node.match").count() == 1
    assert errors == []


def test_labels_and_tokens_do_not_execute(browser, tmp_path):
    g = _graph()
    path = g.to_html(tmp_path / "xss.html")
    html = path.read_text()
    assert "<script>window" not in html and "<img src=x" not in html   # escaped inside the JSON payload
    page, errors, _ = _open(browser, path)
    for node in ("L0.MLP", "L1.SAE.7", "L1.H2"):
        page.locator(f'svg#graph g.node[data-id="{node}"]').click()
        page.wait_for_timeout(50)
    assert page.evaluate("window.__xss") is None
    # shown literally, as text
    page.locator('svg#graph g.node[data-id="L0.MLP"]').click()
    assert XSS[2] in page.locator("#panel").text_content()
    assert XSS[1] in page.locator("#panel").text_content()
    assert page.locator("#panel img, #panel script, #panel svg[onload]").count() == 0
    assert page.locator("#title").text_content() == "circuit: " + XSS[0] + XSS[1]
    assert page.evaluate("window.__xss") is None
    assert errors == []


def test_huge_graph_is_pruned_with_notice(browser, tmp_path):
    import networkx as nx

    from interp.graph import CircuitGraph

    g = CircuitGraph(model="toy", name="huge")
    ids = [f"L{l}.H{h}" for l in range(40) for h in range(12)]
    for n in ids:
        g.add_node(n, score=1.0)
    # write edges straight into the wrapped graph (fast) with the schema's attributes
    k = 0
    for i, u in enumerate(ids):
        for v in ids[i + 12 - i % 12:]:
            if k >= 100_000:
                break
            g.nx.add_edge(u, v, weight=float((k * 7919) % 1000) / 1000, weights={"eap": 0.0}, method="eap",
                          result_id="r", evidence=[])
            k += 1
    assert g.nx.number_of_edges() == 100_000 and isinstance(g.nx, nx.DiGraph)
    path = g.to_html(tmp_path / "huge.html", max_edges=2000)
    page, errors, _ = _open(browser, path)
    assert page.locator("#notice").is_visible()
    assert "2,000 strongest of 100,000 edges" in page.locator("#notice").text_content()
    assert page.locator("svg#graph path.edge").count() == 2000
    assert page.locator("svg#graph g.node").count() == len(ids)
    assert errors == []


def test_opens_on_the_circuit_widens_and_draws_the_curve(browser, tmp_path):
    from test_explorer import CIRCUIT, CURVE, EDGES
    from test_explorer import _graph as circuit_graph

    from interp.explorer import page_data

    g = circuit_graph(name=XSS[2])
    g.add_node("L1.H0", score=0.4, source="exact/denoising/logit_diff", roles=["interfering"])   # contradicted
    g.add_node("L1.H0", score=0.2, source="atp/denoising/logit_diff")
    curve = CURVE.assign(method=XSS[1], selection=XSS[0])
    data = page_data(g, circuit=CIRCUIT, curve=curve)
    page, errors, requests = _open(browser, g.to_html(tmp_path / "circuit.html", circuit=CIRCUIT, curve=curve))
    shown = page.locator("svg#graph path.edge:visible")
    n_circuit = data["view"]["default"]
    assert shown.count() == n_circuit == 4 and page.locator("svg#graph path.edge[data-circuit]:visible").count() == 4
    assert page.locator("svg#graph g.node:visible").count() == len(data["circuit"]["nodes"])
    assert page.locator("#view-k").input_value() == "4"
    assert "view: 4 of 8 edges" in page.locator("#counts").text_content()
    assert "4 graph edges (6 model edges)" in page.locator("#circuit-info").text_content()
    # widen: the slider, then "all edges", then back to "circuit only"
    page.locator("#view-k").fill("6")
    assert shown.count() == 6 and page.locator("svg#graph path.edge.extra:visible").count() == 2
    page.locator("#view-all").click()
    assert shown.count() == len(EDGES) and page.locator("svg#graph g.node:visible").count() == len(g)
    page.locator("#view-circuit").click()
    assert shown.count() == 4
    # roles, agreement: L1.H0 has an interfering ring, dashed (both methods say it supports the clean behaviour)
    ring = page.locator('svg#graph g.node[data-id="L1.H0"] circle.role-ring')
    assert ring.get_attribute("data-role") == "interfering" and ring.get_attribute("stroke-dasharray") == "3,2"
    assert page.locator('svg#graph g.node[data-id="L1.H0"] text.badge.agree').text_content() == "2/2"   # top-3 in both
    page.locator('svg#graph g.node[data-id="L1.H0"]').click()
    assert "gating role contradicts" in page.locator("#panel").text_content()
    # the curve: an inline SVG with the faithfulness line, random band, complement, marker and axis labels
    assert page.locator("#curve-box").is_visible()
    for kind in ("faithfulness", "random", "band", "complement"):
        assert page.locator(f'svg#curve path[data-series="{kind}"]').count() == 1
    assert page.locator("#curve-marker").count() == 1
    text = page.locator("#curve-box").text_content()
    assert "edges in circuit (log scale)" in text and "faithfulness (1 = clean)" in text
    assert "chosen circuit: 6 edges, faithfulness 0.9" in text and XSS[1] in text     # a label shown as text
    assert page.evaluate("window.__xss") is None and errors == []
    assert [u for u in requests if not u.startswith("file:")] == []
