"""Write the tutorial notebooks (``python notebooks/make_notebooks.py``).

The notebooks are generated from the cell lists below so they stay reviewable as code;
``tests/test_notebooks.py`` executes each one top to bottom on the bundled model.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

SETUP = """import os
os.environ.setdefault("HF_HUB_OFFLINE", "1"); os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
import torch
torch.set_num_threads(2)
from interp import load_model
model = load_model("smollm2")     # bundled SmolLM2-135M-Instruct, offline
model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_model"""

NOTEBOOKS: dict[str, list[tuple[str, str]]] = {
    "quickstart": [
        ("md", "# interp quickstart\n\nLoad the bundled model, cache activations, run one analysis that returns a "
               "`Result`, and put its evidence into a circuit graph with an offline explorer."),
        ("code", SETUP),
        ("md", "## Tokenize and run\n`tokenize` right-pads and keeps lengths; `batch.last` is each prompt's last token."),
        ("code", """from interp import tokenize
batch = tokenize(model, ["The Eiffel Tower is located in the city of", "When Mary and John went to the store, John gave a drink to"])
with torch.inference_mode():
    logits = model(batch.tokens)
last = logits[torch.arange(len(batch)), batch.last]
[model.tokenizer.decode(int(i)) for i in last.argmax(-1)]"""),
        ("md", "## Cache activations\nOnly the requested sites are kept; the store can live on disk as safetensors shards."),
        ("code", """from interp import Site
from interp.cache import collect
store = collect(model, list(batch.texts), "resid_post", progress=False)
store[Site("resid_post", 3)].shape"""),
        ("md", "## One analysis, one Result\nAttribution patching (AtP) on a few IOI prompts: a tidy table, one row per node."),
        ("code", """from interp.datasets import build_task
from interp.patching import attribution_patching, AttributionConfig
ds = build_task("ioi", model=model, n=8, seed=0)
atp = attribution_patching(model, ds, AttributionConfig(components=("z", "mlp_out")))
atp.table.sort_values("value", key=abs, ascending=False).head(8)[["node", "value"]]"""),
        ("md", "## Into a circuit graph\nEvery node keeps the rows of the Results that mention it."),
        ("code", """from interp.graph import CircuitGraph
g = CircuitGraph(name="quickstart").add_result(atp)
top = g.prune(top_k_nodes=12, kinds=["head", "mlp"])
top"""),
        ("code", """top.show(height=420)   # the explorer page, inline (also: top.to_html("quickstart.html"))"""),
    ],
    "ioi_circuit": [
        ("md", "# The IOI circuit of SmolLM2-135M\n\nEdge attribution patching finds candidate edges; the circuit is "
               "the nodes of the strongest edges; its faithfulness (heads outside it mean-ablated) is compared "
               "with random circuits of the same size. The full job is `interp run analyses/ioi_circuit.toml`."),
        ("code", SETUP),
        ("code", """from interp.datasets import build_task
ds = build_task("ioi", model=model, n=12, seed=0)
ds.clean[0], ds.answers[0], ds.counterfactuals[0]"""),
        ("md", "## Node scores (AtP) and edge scores (EAP)"),
        ("code", """from interp.patching import attribution_patching, edge_attribution_patching, AttributionConfig
cfg = AttributionConfig(components=("z", "mlp_out"), metric="logit_diff_norm")
atp = attribution_patching(model, ds, cfg)
eap = edge_attribution_patching(model, ds, cfg)
len(atp.table), len(eap.table)"""),
        ("md", "## Graph and circuit"),
        ("code", """from interp.graph import CircuitGraph, prune
g = CircuitGraph(name="ioi").add_result(atp).add_result(eap, top_k=1000)
circuit = prune(g, top_k_edges=100)
circuit.nx.graph["name"] = "ioi_circuit"
circuit"""),
        ("code", """from interp.plots import export
fig = circuit.figure(title="IOI circuit (SmolLM2-135M)")
fig"""),
        ("md", "## Faithfulness vs random circuits of the same size"),
        ("code", """from interp.graph import random_baseline
faith = random_baseline(model, circuit, ds.subset(range(8)), n_samples=2)
faith.table[["circuit", "n_heads", "n_mlps", "ld_full", "ld_circuit", "ld_ablated", "faithfulness", "normalized"]]"""),
        ("code", """import tempfile, pathlib
out = pathlib.Path(tempfile.mkdtemp())
paths = [circuit.to_json(out / "ioi.json"), circuit.to_graphml(out / "ioi.graphml"), circuit.to_html(out / "ioi.html")]
[p.name for p in paths]"""),
        ("code", "circuit.show(height=520)"),
    ],
    "sinks": [
        ("md", "# Attention sinks, massive activations and dormant heads\n\nStreaming statistics over two prompt "
               "domains; the Results flag heads and layers in the circuit graph."),
        ("code", SETUP),
        ("code", """from pathlib import Path
import interp
from interp.datasets import load_prompts
root = Path(interp.__file__).resolve().parents[1] / "data" / "prompts"
domains = {d: load_prompts(root / f"{d}.txt")[:6] for d in ("prose", "code")}
{k: len(v) for k, v in domains.items()}"""),
        ("code", """from interp.sinks import analyze, AnalysisConfig
results = {r.kind: r for r in analyze(model, domains, AnalysisConfig(max_len=48, run_interventions=False))}
sorted(results)"""),
        ("code", """heads = results["sinks.heads"].table
print(f"heads with a first-token sink: {int(heads.is_sink.sum())} of {len(heads)}")
results["massive.layers"].table.query("is_massive").head()"""),
        ("code", """results["sinks.heads"].figure()"""),
        ("code", """from interp.graph import CircuitGraph
g = CircuitGraph(name="sinks")
for kind in ("sinks.heads", "sinks.dormancy", "massive.layers"):
    if kind in results:
        g.add_result(results[kind])
print(len(g.nodes), "nodes;", sum("sink" in g.node(n)["flags"] for n in g.nodes), "flagged as sinks;",
      "massive layers:", sorted(int(k) for k, v in g.layers.items() if "massive" in v["flags"]))"""),
    ],
    "sae": [
        ("md", "# A small SAE on attention outputs\n\nCapture `hook_z` (heads concatenated) of one layer on the "
               "bundled prompts, train a tiny TopK SAE with SAE-Lens, inspect its features and attribute them to "
               "heads (direct feature attribution); the features join the circuit graph with their top examples."),
        ("code", SETUP),
        ("code", """from pathlib import Path
import interp
from interp import Site, tokenize
from interp.datasets import load_prompts
root = Path(interp.__file__).resolve().parents[1] / "data" / "prompts"
texts = load_prompts(root / "prose.txt") + load_prompts(root / "code.txt")
tb = tokenize(model, texts, max_len=64)
site = Site("z", 6)
tb.tokens.shape"""),
        ("code", """from interp.sae import capture_activations, ActivationBatches, SAETrainConfig, train_sae
acts = capture_activations(model, tb.tokens, [site], lengths=tb.lengths)[site]
cfg = SAETrainConfig(architecture="topk", k=16, expansion=2, training_tokens=40_000, batch_size=256)
trained = train_sae(ActivationBatches.from_tensor(acts, batch_size=256), cfg, site=site, model=model,
                    model_name="smollm2")
acts.shape, trained.history.table.tail(1)"""),
        ("code", """from interp.sae import analyze_features, FeatureConfig, direct_feature_attribution
fa = analyze_features(model, trained.sae, site, tb.tokens, FeatureConfig(n_examples=5))
top = fa.features.table.sort_values("max_act", ascending=False).head(5)
top[["feature", "density", "max_act", "top_tokens"]]"""),
        ("code", """dfa = direct_feature_attribution(model, trained.sae, site, tb.tokens, features=[int(f) for f in top.feature])
dfa.table.sort_values("value", key=abs, ascending=False).head(8)[["feature", "node", "value"]]"""),
        ("code", """from interp.graph import CircuitGraph
g = CircuitGraph(name="sae features").add_result(dfa).add_result(fa.features).add_result(fa.examples)
g.show(height=480)"""),
    ],
    "steering": [
        ("md", "# Steering axes\n\nA sentiment axis as the difference of means of the residual stream on "
               "positive and negative sentences, a probe for comparison, and steering with a perplexity control."),
        ("code", SETUP),
        ("code", """from importlib import resources
rows = [l.rstrip("\\n").split("\\t") for l in resources.files("interp").joinpath("data/steering/sentiment.tsv")
        .read_text().splitlines() if l and not l.startswith("#")]
pos = [t for lab, _, t in rows if lab == "1"][:16]
neg = [t for lab, _, t in rows if lab == "0"][:16]
neutral = resources.files("interp").joinpath("data/steering/neutral.txt").read_text().splitlines()[:4]
len(pos), len(neg)"""),
        ("code", """from interp import Site
from interp.steering import residual_activations, contrast_axis, probe_axis, axes_result
layers = [6, 12, 18]
acts = residual_activations(model, pos + neg, layers)
labels = [1] * len(pos) + [0] * len(neg)
axes = [contrast_axis(acts[l][: len(pos)], acts[l][len(pos):], site=Site("resid_post", l), name="sentiment",
                      model="smollm2") for l in layers]
probes = [probe_axis(acts[l], labels, site=Site("resid_post", l), name="sentiment-probe", model="smollm2") for l in layers]
axes_result(axes + probes).table[["name", "method", "layer", "node", "norm", "accuracy"]]"""),
        ("code", """from interp.steering import sweep
res = sweep(model, axes[1:2], [0.0, 1.0, 2.0], ["I think this movie is", "Honestly, the food was"],
            targets=[" great", " good", " wonderful"], neutral=neutral, negatives=[" bad", " terrible", " awful"],
            progress=False)
res.table[["layer", "alpha", "target_prob", "negative_prob", "perplexity"]]"""),
        ("code", """from interp.steering import generate, steer_factory
prompt = "I watched the movie last night and it was"
{"plain": generate(model, prompt, max_new_tokens=8)[0],
 "steered": generate(model, prompt, max_new_tokens=8, steer=steer_factory(model, axes[1], 2.0))[0]}"""),
        ("code", """from interp.graph import CircuitGraph
g = CircuitGraph(name="steering").add_result(axes_result(axes + probes))
{layer: info["flags"] for layer, info in g.layers.items()}"""),
    ],
    "vlm_analyses": [
        ("md", "# Vision-language models: visual sinks, FCCT, NOTICE, VHD\n\nOn the VLM trained here "
               "(`data/toy/vlm`: coloured shapes on a 4x4 grid, one object = one image patch, a visual sink planted "
               "on patch 0). Any LLaVA-style folder or `toy:llava` works the same way."),
        ("code", """import os
os.environ.setdefault("HF_HUB_OFFLINE", "1"); os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
import numpy as np, torch
torch.set_num_threads(2)
from interp import load_model, tokenize
from interp.vlm import scenes as S
model = load_model("data/toy/vlm")
scenes = S.draw_scenes(16, seed=11, split="held_out")
questions = S.draw_questions(scenes, "exists", seed=3, answer="yes")     # the asked object exists: its patch is known
images = scenes.images()
batch = tokenize(model, ["<image>" + q.text for q in questions], images=list(images))
answers = [q.answer for q in questions]
cells = [q.target.cell for q in questions]
boxes = [((c % 4) * 8, (c // 4) * 8, (c % 4) * 8 + 8, (c // 4) * 8 + 8) for c in cells]   # pixels of each object
questions[0].text, cells[:4]"""),
        ("md", "## Visual attention sinks and VAR\nSink tokens: max over the sink dims of |h / rms(h)| > tau. "
               "VAR's tau = 20 is out of reach at d_model = 64 (the bound is 8), so the planted sink's tau = 4 is used."),
        ("code", """from interp.vlm.sinks import VarConfig, visual_sinks, var_effect
found = visual_sinks(model, batch, VarConfig(tau=4.0, layers=(1, 2)))
print("sink dims", found.meta.extra["dims"])
found.table.groupby(["layer", "is_image", "patch"]).size()"""),
        ("code", """var = var_effect(model, batch, answers, VarConfig(tau=4.0, layers=(1,)))
var.table[["p_base", "p_var", "argmax_changed"]].describe().loc[["mean", "max"]]"""),
        ("md", "## FCCT: cross-modal causal tracing\nNoise on the image tokens' embeddings; restore one component at "
               "one layer for one token group; recovery = (P_patched - P_corrupt) / (P_clean - P_corrupt)."),
        ("code", """from interp.vlm.fcct import fcct, patch_groups, object_ratio, iri
grid = fcct(model, batch, answers, box=boxes)
ratio = object_ratio(model, batch, answers, boxes, layer=0)
print(f"object patch recovers {ratio['object']:.3f}, other patches {np.mean(ratio['others']):.3f} "
      f"(difference {ratio['difference']:.3f})")
grid.figure()"""),
        ("code", """from interp.vlm.plots import recovery_map, attention_map
one = tokenize(model, ["<image>" + questions[0].text], images=images[0])
patches = fcct(model, one, answers[:1], groups=patch_groups(one), name="patches")
print("asked object in patch", cells[0])
recovery_map(patches, component="resid", layer=0, image=images[0])"""),
        ("code", """attention_map(model, one, layer=1, head=0)        # the last token's attention over the image"""),
        ("code", """iri(model, batch, answers, grid, group="text").table[["p_base", "p_iri"]].mean()"""),
        ("md", "## NOTICE: a semantic minimal pair\nThe same scenes with the asked object's colour changed; head "
               "patching with the normalised logit difference (yes vs no)."),
        ("code", """from interp.vlm.notice import notice_patching
pairs = [S.minimal_pair(scenes.scene(i), q.shape, "colour", seed=i).render() for i, q in enumerate(questions)]
changed = tokenize(model, list(batch.texts), images=pairs)
heads = notice_patching(model, batch, changed, ["yes"] * len(batch), ["no"] * len(batch))
heads.table[heads.table.metric == "logit_diff_norm"].sort_values("effect", ascending=False).head()[["node", "effect"]]"""),
        ("md", "## VHD and VHR\nEach head's last-token output with and without the image; VHR scales the selected heads."),
        ("code", """from interp.vlm.vhd import vhd, vhr
scores = vhd(model, batch, answers=answers)
print("T-VHD", round(scores.meta.extra["t_vhd"], 3), "Spearman with exact ablation", round(scores.meta.extra["spearman"], 3))
vhr(model, batch, answers, scores).table[["p_base", "p_vhr"]].mean()"""),
        ("md", "## Visual token groups in the circuit graph"),
        ("code", """from interp.graph import CircuitGraph
g = CircuitGraph(name="vlm").add_result(grid).add_result(scores)
g.nodes_of("visual"), [e for e in g.edges if e[0] == "VIS.object"]"""),
    ],
    "attribution_graph": [
        ("md", "# Attribution graph: \"The Eiffel Tower is located in the city of\" -> \" Paris\"\n\n"
               "Traces the prompt through per-layer transcoders with circuit-tracer's method (the local replacement "
               "model: attention patterns and norm scales frozen, transcoders in place of the MLPs, error nodes; "
               "edges are direct effects; pruned by node and edge influence) and shows the graph inline in the "
               "explorer: features laid out by layer (y) and token (x), each with its top activating examples and "
               "its direct effects on the top logits, and supernodes grouped by hand.\n\n"
               "**What it needs.** The bundled SmolLM2-135M (prepared by `setup.sh`) **and its trained transcoders**, "
               "one per layer, in the user cache (`~/.cache/interp/transcoders/<model identity>/L0` ... `L29`), made by "
               "`interp transcoders train smollm2` (see the README's transcoder section for the budget and time). "
               "Without them the model cell stops with an error naming the missing layers. On CPU the graph of "
               "this 12-token prompt takes minutes (BENCHMARKS.md has the measured time and memory).\n\n"
               "To run it without them, start Jupyter with `INTERP_ATTRIBUTION_NOTEBOOK=toy`: it then uses the tiny "
               "random `toy:llama` with transcoders trained here in seconds (the toy knows no facts, so there is no "
               "Paris; `tests/test_notebooks.py` runs it this way, and on SmolLM2 when the transcoders are present)."),
        ("code", """import os
os.environ.setdefault("HF_HUB_OFFLINE", "1"); os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
import torch
torch.set_num_threads(2)
MODEL = os.environ.get("INTERP_ATTRIBUTION_NOTEBOOK", "smollm2")   # "toy": toy:llama + toy transcoders trained here
PROMPT, TARGET = "The Eiffel Tower is located in the city of", " Paris"
MODEL"""),
        ("code", """import tempfile
from interp import load_model
from interp.transcoders import load_transcoders
from interp.transcoders.attribution import AttributionConfig
cfg = AttributionConfig()                      # circuit-tracer's pruning: node influence 0.8, edge influence 0.98
if MODEL == "toy":
    from interp.cache import collect
    from interp.transcoders import TranscoderTrainConfig, train_transcoders
    model = load_model("toy:llama")
    texts = [f"the quick brown fox {i} jumps over the lazy dog number {i * 7}" for i in range(12)]
    tc_dir = tempfile.mkdtemp(prefix="toy-transcoders-")
    train_transcoders(model, collect(model, texts, "mlp_in,mlp_out", progress=False),
                      TranscoderTrainConfig(d_sae=32, k=2, steps=30, batch_size=64, lr=3e-3), folder=tc_dir)
    transcoders = load_transcoders(model, tc_dir)
    cfg = AttributionConfig(node_threshold=0.99)   # the toy's MLPs carry little influence: keep more nodes
else:
    model = load_model(MODEL)
    transcoders = load_transcoders(model)      # the user cache; a StoreError names any missing layer
len(transcoders), model.cfg.n_layers"""),
        ("md", "## The attribution graph\nOne backward pass per batch of targets (active features, then the top "
               "logits); replacement and completeness scores as circuit-tracer defines them."),
        ("code", """import pandas as pd
from interp.transcoders.attribution import attribute
attr = attribute(model, PROMPT, transcoders, cfg)
print(f"{attr.n_pos} tokens, {attr.n_features} active features, scores {attr.scores()}")
print(f"{TARGET!r} among the top logits: {TARGET in attr.logit_strs}")
pd.DataFrame({"token": attr.logit_strs, "prob": attr.logit_probs.tolist()})"""),
        ("md", "## Into the explorer\nThe pruned graph as a `CircuitGraph`. "
               "Each feature's **top activating examples** come from the SAE dashboard's feature analysis "
               "(`interp.sae.features.analyze_features`) run with its layer's transcoder over the held-out texts "
               "below; its **logit effects** are its direct effects on the top logits (the graph's adjacency). "
               "Click a node for its panel; shift-click nodes, name them and press *group* to make a supernode."),
        ("code", """from interp import tokenize
from interp.explorer import show
from interp.explorer.features import attribution_context, feature_examples
graph = attr.to_graph(name="eiffel")
held_out = ["The Louvre is a museum in Paris, the capital of France.", "Big Ben is a clock tower in London.",
            "The Colosseum stands in the city of Rome.", "Berlin is the capital and largest city of Germany.",
            "The Statue of Liberty is located in New York.", "Tokyo Tower is a landmark in Japan.",
            "She moved to the city of Lyon last year.", "The tower was built for the 1889 World's Fair.",
            "Madrid is located in the centre of Spain.", "The river Seine flows through the city."]
examples, source = feature_examples(model, transcoders, graph, tokenize(model, held_out).tokens, n_examples=5)
ctx = attribution_context(attr, graph, examples=examples, examples_source=source)
print(graph, "|", len(examples), "features with examples")
show(graph, features=ctx, height=720)"""),
        ("md", "## Supernodes, saved with the graph\nGroups made in the page are saved with its *download supernodes* "
               "button; in code, `save_supernodes` writes the same JSON sidecar next to the graph file and "
               "`load_supernodes` reads either back. Here: the four most influential features as one node."),
        ("code", """from pathlib import Path
from interp.explorer.supernodes import load_supernodes, save_supernodes, sidecar_path
out = Path(tempfile.mkdtemp(prefix="eiffel-"))
graph_file = graph.to_json(out / "circuit_graph.json")
top = sorted(graph.nodes_of("tc"), key=lambda n: -graph.node(n)["score"])[:4]
sidecar = save_supernodes(sidecar_path(graph_file), [{"name": "most influential", "members": top}], graph)
supernodes = load_supernodes(sidecar, graph)
print(sidecar.name, supernodes)
show(graph, features=ctx, supernodes=supernodes, height=720)"""),
        ("md", "## Neuronpedia graph JSON, and back\nThe same graph in circuit-tracer's format (supernodes in "
               "`qParams.supernodes`), validated, loaded back into a `CircuitGraph` with the same nodes and edges, "
               "and reopened in the explorer from the file alone."),
        ("code", """import json
from interp.explorer.features import context_from_neuronpedia
from interp.explorer.supernodes import from_neuronpedia_supernodes, to_neuronpedia_supernodes
from interp.transcoders.graph_json import from_neuronpedia, to_neuronpedia, validate_neuronpedia
np_file = out / "eiffel.json"
np_file.write_text(json.dumps(to_neuronpedia_supernodes(to_neuronpedia(attr, slug="eiffel"), supernodes)))
obj = json.loads(np_file.read_text())
validate_neuronpedia(obj)
back = from_neuronpedia(obj)
assert sorted(back.nodes) == sorted(graph.nodes) and sorted(back.edges) == sorted(graph.edges)
assert from_neuronpedia_supernodes(obj) == supernodes
back.to_html(out / "eiffel.html", features=context_from_neuronpedia(obj, back), supernodes=supernodes)
len(back), len(back.edges), sorted(p.name for p in out.iterdir())"""),
    ],
}


def build(name: str) -> nbformat.NotebookNode:
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [new_markdown_cell(src) if kind == "md" else new_code_cell(src) for kind, src in NOTEBOOKS[name]]
    return nb


def main() -> None:
    for name in NOTEBOOKS:
        path = HERE / f"{name}.ipynb"
        nbformat.write(build(name), path)
        print("wrote", path)


if __name__ == "__main__":
    main()
