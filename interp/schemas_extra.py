"""Result kinds of circuits, ground-truth toys, sparse attention decomposition, attention diagnostics and the
VLM analyses: the second half of :mod:`interp.schemas`' table (same helpers, same rules), split off to keep
files focused. :mod:`interp.schemas` appends :data:`KINDS` to its table on import; import that module, not
this one.
"""

from __future__ import annotations

from interp.schemas import _HEAD, _LAYER, _NODE, Schema, _C

KINDS: list[Schema] = [
    # --------------------------------------------------------------- ground-truth toys (issue 16 item 4)
    Schema("groundtruth.auc", "one discovery method scored against a toy's known circuit at one level", (
        _C("toy", "str", "", "the ground-truth toy (induction, planted)"),
        _C("method", "str", "", "exact, atp, eap, eap-ig, eap-ig-activations, acdc, chg"),
        _C("level", "str", "", "node (heads) or edge (sender -> receiver input)"),
        _C("auc", "float", "fraction", "ROC AUC of |score| for the true units (1 = all true units ranked first)"),
        _C("n_true", "int", "", "true units (heads or edges) in the circuit"),
        _C("n_total", "int", "", "units scored"),
        _C("true_ranks", "list", "", "ranks (1 = largest |score|; ties share their average rank) of the true units"),
        _C("top", "list", "", "the n_true highest-ranked units"),
    )),
    Schema("groundtruth.heads", "one head of a ground-truth toy: measured role scores and verdict", (
        _C("toy", "str", "", "the ground-truth toy"),
        _LAYER, _HEAD, _NODE,
        _C("role", "str", "", "the role tested (prev_token, induction, copy, mover)"),
        _C("score", "float", "fraction", "mean attention on the role's target position"),
        _C("threshold", "float", "fraction", "the score above which the head has the role"),
        _C("is_true", "bool", "", "score > threshold: the head belongs to the circuit"),
    )),
    # --------------------------------------------------------------- circuits: edge-level evaluation (issue 16)
    Schema("circuits.eval", "one circuit (edge set) run with every edge outside it patched", (
        _C("circuit", "str", "", "circuit name"),
        _C("ablation", "str", "", "patching (paired corrupted outputs) or mean (their positional mean)"),
        _C("n_edges", "int", "", "edges in the circuit (k/v edges of a GQA group counted once)"),
        _C("n_nodes", "int", "", "heads and MLPs the edges touch"),
        _C("ld", "float", "logits", "mean logit difference of the circuit run"),
        _C("faithfulness", "float", "1 = clean", "(ld - ld_corrupted) / (ld_clean - ld_corrupted)"),
        _C("ld_clean", "float", "logits", "mean logit difference of the clean run"),
        _C("ld_corrupted", "float", "logits", "mean logit difference of the corrupted run"),
    )),
    Schema("circuits.curve", "one circuit size of an edge-level faithfulness curve", (
        _C("method", "str", "", "method(s) of the edge Result ranked (eap, eap-ig, path, ...)"),
        _C("selection", "str", "", "top_n or greedy"),
        _C("n_edges", "int", "", "edges in the circuit"),
        _C("n_nodes", "int", "", "heads and MLPs the edges touch"),
        _C("faithfulness", "float", "1 = clean", "edge-level faithfulness of the circuit"),
        _C("ld", "float", "logits", "mean logit difference of the circuit run"),
        _C("random_mean", "float", "1 = clean", "mean faithfulness of random circuits of n_edges (NaN: none drawn)",
           nan_ok=True),
        _C("random_std", "float", "1 = clean", "std of those (NaN: fewer than 2 draws)", nan_ok=True),
        _C("complement", "float", "1 = clean", "faithfulness of every edge but the circuit (NaN: not run)",
           nan_ok=True),
    )),
    # --------------------------------------------------------------- sparse attention decomposition (interp.sad)
    Schema("sad.signals", "one sender -> receiver-input signal of sparse attention decomposition (not an effect)", (
        _C("method", "str", "", "sad"),
        _C("src", "str", "", "sender node (EMBED, a head, an MLP)"),
        _C("dst", "str", "", "receiving head"),
        _C("dst_input", "str", "", "q (through the receiver's query) or k (through its key)"),
        _C("signal", "float", "attention score", "sender's share of the kept singular-vector terms, mean over firings"),
        _C("share", "float", "fraction", "signal / mean kept score of the receiver (NaN: zero kept score)",
           nan_ok=True),
        _C("n_firings", "int", "", "(prompt, query, key) firings of the receiver averaged over"),
        _C("n_prompts", "int", "", "prompts with at least one firing"),
        _C("dst_score", "float", "attention score", "receiver's mean full score over its firings"),
        _C("dst_kept_score", "float", "attention score", "receiver's mean kept-terms score"),
        _C("dst_terms", "float", "terms", "receiver's mean number of kept terms (of d_head)"),
        _C("depth", "int", "", "receivers between the traced head and this edge's receiver (0: the traced head)"),
        _C("fraction", "float", "fraction", "f: kept terms reach this fraction of each score"),
    )),
    # --------------------------------------------------------------- attention diagnostics (interp.diagnostics)
    Schema("diagnostics.layers", "one layer's attention diagnostics over a batch of prompts", (
        _LAYER,
        _C("cos_sim", "float", "cosine", "mean pairwise cosine similarity of the heads' batch-averaged patterns "
           "(NaN: one head)", nan_ok=True),
        _C("entropy_std", "float", "nats", "std across heads of the heads' mean attention entropy"),
        _C("entropy_mean", "float", "nats", "mean across heads of the heads' mean attention entropy"),
        _C("n_heads", "int", "", "heads in the layer"),
        _C("n_prompts", "int", "", "prompts averaged over"),
    )),
    Schema("diagnostics.heads", "one head's attention entropy over a batch of prompts", (
        _LAYER, _HEAD, _NODE,
        _C("entropy", "float", "nats", "mean over prompts of the mean over queries of the attention entropy"),
        _C("entropy_spread", "float", "nats", "std over prompts of that per-prompt entropy"),
        _C("n_prompts", "int", "", "prompts averaged over"),
    )),
    Schema("diagnostics.curves", "one layer's attention diagnostics at one training step of one run", (
        _C("run", "str", "", "run label (e.g. wd=1)"),
        _C("step", "int", "", "training step"),
        _LAYER,
        _C("cos_sim", "float", "cosine", "as diagnostics.layers (NaN: one head)", nan_ok=True),
        _C("entropy_std", "float", "nats", "as diagnostics.layers"),
        _C("entropy_mean", "float", "nats", "as diagnostics.layers"),
        _C("n_heads", "int", "", "heads in the layer"),
        _C("n_prompts", "int", "", "probe prompts"),
    ), extra_prefixes=("m_",)),

    # --------------------------------------------------------------- circuits: ACDC membership (issue 16 item 3)
    Schema("circuits.acdc", "one edge of the model's graph after ACDC pruning", (
        _C("src", "str", "", "sender node id"),
        _C("dst", "str", "", "receiver node id (k/v of a GQA group: its first query head)"),
        _C("dst_input", "str", "", "the receiver's input: q, k, v, mlp or logits"),
        _C("metric", "str", "", "the metric ACDC thresholded (kl, logit_diff, logit_diff_norm)"),
        _C("effect", "float", "metric units", "metric change measured when the edge was removed (0: untested)"),
        _C("in_circuit", "bool", "", "the edge was kept"),
    )),
    # --------------------------------------------------------------- VLM analyses (issue 17)
    Schema("vlm.sinks", "one sink token (text or image) entering one layer of one prompt (VAR)", (
        _C("prompt", "int"), _LAYER, _C("pos", "int", "", "position in the prompt"), _C("token", "str"),
        _C("is_image", "bool", "", "an image token (a visual sink)"),
        _C("patch", "int", "", "index among the prompt's image tokens (-1 = text)"),
        _C("value", "float", "normalised units", "max over the sink dims of |RMS-normalised hidden state|"),
        _C("dims", "list", "", "the sink dimensions"),
    )),
    Schema("vlm.heads", "one head's image attention and visual-sink share (VAR's image-centric test)", (
        _LAYER, _HEAD, _NODE,
        _C("image_attention", "float", "probability", "mean attention of VAR's queries to image tokens"),
        _C("sink_share", "float", "fraction", "mean share of that image attention on visual sinks"),
        _C("frac_centric", "float", "fraction", "share of (prompt, query) coordinates where the head is image-centric"),
        _C("centric_last", "float", "fraction", "share of prompts where it is image-centric at the last token"),
        _C("n_visual_sinks", "int", "", "visual sink tokens at this layer over the batch"),
    )),
    Schema("vlm.var", "one prompt's answer without and with Visual Attention Redistribution", (
        _C("prompt", "int"), _C("answer", "str"),
        _C("p_base", "float", "probability"), _C("p_var", "float", "probability"),
        _C("correct_base", "bool"), _C("correct_var", "bool"),
        _C("argmax_changed", "bool", "", "the top token differs with VAR"),
        _C("max_logit_change", "float", "logits", "largest |logit change| at the answer position"),
    )),
    Schema("vlm.fcct", "one restored (layer, component, token group) cell of cross-modal causal tracing", (
        _LAYER, _C("component", "str", "", "attn_out, mlp_out or resid (resid_post)"),
        _C("site", "str", "", "the restored site's component"),
        _C("group", "str", "", "token group restored (image, text, last, object, early, late, ...)"),
        _NODE, _C("n_positions", "float", "", "mean positions restored per prompt"),
        _C("p_clean", "float", "probability"), _C("p_corrupt", "float", "probability"),
        _C("p_patched", "float", "probability"),
        _C("recovery", "float", "1 = clean", "(p_patched - p_corrupt) / (p_clean - p_corrupt)"),
    )),
    Schema("vlm.iri", "one prompt's answer without and with intermediate representation injection", (
        _C("prompt", "int"), _C("component", "str", "", "attn_out or mlp_out"),
        _C("p_base", "float", "probability"), _C("p_iri", "float", "probability"),
        _C("correct_base", "bool"), _C("correct_iri", "bool"),
    )),
    Schema("vlm.vhd", "one head's vision-aware head divergence", (
        _LAYER, _HEAD, _NODE,
        _C("vhd", "float", "d_head units", "mean L2 distance of the head's last-token z with and without the image"),
        _C("rank", "int", "", "1 = largest VHD"), _C("selected", "bool", "", "selected by VHR"),
        _C("ablation_effect", "float", "probability", "change of the answer's probability with the head zeroed",
           optional=True),
        _C("image_swap_effect", "float", "probability", "change of the answer's probability with the head's z "
           "taken from the same prompt with another prompt's image", optional=True),
    )),
    Schema("vlm.vhr", "one prompt's answer without and with vision-aware head reinforcement", (
        _C("prompt", "int"), _C("p_base", "float", "probability"), _C("p_vhr", "float", "probability"),
        _C("correct_base", "bool"), _C("correct_vhr", "bool"),
    )),
    # --------------------------------------------------------------- transcoders: evaluation (issue 20)
    Schema("transcoders.eval", "one layer's transcoder on held-out tokens (replacement-model losses in meta.extra)", (
        _LAYER, _C("l0", "float", "features", "mean active features per (non-sink) token"),
        _C("explained_variance", "float", "fraction", "1 - SSE / total variance of mlp_out (given the real mlp_in)"),
        _C("nmse", "float", "fraction", "SSE / total variance (= 1 - explained_variance)"),
        _C("dead_features", "int", "", "features never active on the held-out tokens"),
        _C("d_sae", "int", "", "features of the transcoder"),
        _C("n_tokens", "int", "", "held-out tokens scored (sink positions and padding left out)"),
        _C("n_sink_tokens", "int", "", "sink positions (first positions, massive-activation tokens): real MLP kept"),
    )),
]
