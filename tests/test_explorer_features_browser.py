"""An attribution graph's explorer page in headless Chromium: token columns shown as text, the feature panel,
and supernodes grouped by hand, downloaded, loaded back and ungrouped (setup: tests/test_explorer_browser.py)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace

import pytest

from test_explorer_browser import XSS, _open, browser  # noqa: F401  (the browser fixture)
from test_explorer_features import toy_attribution

pytestmark = pytest.mark.browser


def _hostile_page(tmp_path):
    from interp.explorer import write_html
    from interp.explorer.features import attribution_context

    _, _, attr = toy_attribution()
    attr = replace(attr, token_strs=[XSS[i % len(XSS)] for i in range(attr.n_pos)],
                   logit_strs=[XSS[i % len(XSS)] for i in range(len(attr.logit_tokens))])
    graph = attr.to_graph(name=XSS[0])
    feats = [n for n in graph.nodes if ".TC." in n]
    key = feats[0].split("@")[0]
    examples = {key: [{"token": XSS[i], "left": [XSS[3], " the"], "right": [XSS[4]], "value": 2.0 - i} for i in range(2)]}
    ctx = attribution_context(attr, graph, examples=examples, examples_source="hand-made <b>rows</b>")
    return graph, attr, feats, write_html(graph, tmp_path / "features.html", features=ctx)


def test_feature_page_shows_tokens_as_text_and_the_feature_panel(browser, tmp_path):
    graph, attr, feats, path = _hostile_page(tmp_path)
    page, errors, requests = _open(browser, path)
    assert page.locator("svg#graph g.node").count() == len(graph)
    labels = page.eval_on_selector_all(".col-label", "els => els.map(e => [e.getAttribute('data-pos'), e.firstChild.nodeValue])")
    assert labels == [[str(p), t] for p, t in enumerate(attr.token_strs)]        # the token strings, as text
    assert [u for u in requests if not u.startswith("file:")] == []
    page.locator(f'svg#graph g.node[data-id="{feats[0]}"]').click()
    assert page.locator("#panel table.logit-effects tr").count() == len(attr.logit_tokens) + 1
    assert page.locator("#panel ul.examples:not(.prompt-acts) li").count() == 2
    assert page.locator("#panel ul.examples li b").first.text_content() == XSS[0]
    assert "hand-made <b>rows</b>" in page.locator("#panel").text_content()
    page.locator('svg#graph g.node[data-id="EMBED@0"]').click()
    page.locator(f'svg#graph g.node[data-id="{graph.nodes[-1]}"]').click()
    assert page.evaluate("window.__xss") is None
    assert page.locator("#panel img, #panel script, svg#graph img, svg#graph script").count() == 0
    assert errors == []


def test_supernodes_group_download_load_and_ungroup(browser, tmp_path):
    from interp.explorer.supernodes import load_supernodes

    graph, _, feats, path = _hostile_page(tmp_path)
    page, errors, _ = _open(browser, path)
    a, b = feats[0], feats[1]
    page.locator(f'svg#graph g.node[data-id="{a}"]').click(modifiers=["Shift"])
    page.check("#pick-mode")
    page.locator(f'svg#graph g.node[data-id="{b}"]').click()
    page.fill("#super-name", XSS[4])
    page.click("#super-group")
    assert page.locator("svg#graph g.node.super").count() == 1
    assert page.locator(f'svg#graph g.node[data-id="{a}"]').count() == 0
    assert page.locator("svg#graph g.node").count() == len(graph) - 1
    # the drawn edges: member edges redirected to the supernode and summed, the edge between members dropped
    merged: dict[tuple[str, str], float] = defaultdict(float)
    for u, v in graph.edges:
        u2, v2 = ("SN:" + XSS[4] if x in (a, b) else x for x in (u, v))
        if u2 != v2:
            merged[(u2, v2)] += graph.edge(u, v)["weight"]
    assert page.locator("svg#graph path.edge").count() == len(merged)
    with page.expect_download() as dl:
        page.click("#super-save")
    saved = tmp_path / "saved.supernodes.json"
    dl.value.save_as(saved)
    assert load_supernodes(saved, graph) == [{"name": XSS[4], "members": [a, b]}]
    # a fresh page loads the file back; ungrouping restores the members
    page2, errors2, _ = _open(browser, path)
    page2.set_input_files("#super-load", str(saved))
    page2.wait_for_selector("svg#graph g.node.super")
    assert page2.locator(f'svg#graph g.node[data-id="{b}"]').count() == 0
    page2.locator("svg#graph g.node.super").click()
    assert page2.locator("#panel ul.members li").count() == 2
    page2.click("#super-ungroup")
    assert page2.locator("svg#graph g.node.super").count() == 0
    assert page2.locator("svg#graph g.node").count() == len(graph)
    # a file naming a node of another graph is refused with a message, nothing grouped
    bad = tmp_path / "bad.json"
    bad.write_text(saved.read_text().replace(a, "L9.TC.1@0"))
    page2.set_input_files("#super-load", str(bad))
    page2.wait_for_function("document.getElementById('super-msg').textContent.indexOf('L9.TC.1@0') >= 0")
    assert page2.locator("svg#graph g.node.super").count() == 0
    assert page.evaluate("window.__xss") is None and page2.evaluate("window.__xss") is None
    assert errors == [] and errors2 == []
