"""Ground-truth toy (b): a GPT-2 whose circuit of four heads is planted by hand.

**Task**: the prompt starts with one letter written three times, then filler letters
(``"ccc" + "qwhk..."``); the answer is that letter. Clean/corrupted pairs differ only in the
tripled letter (``"ccc..."`` vs ``"fff..."``), answer ``c``, counterfactual ``f``.

**Construction** (:func:`planted_weights`; GPT-2, 2 layers x 4 heads, d_model 128, d_head 32,
attention only: MLP weights and biases zero). The residual stream has named subspaces:
``TOK`` (dims 0-25: one-hot letter ``a..z``; dim 26: BOS), ``POS`` (dims 32-63: one-hot
position), ``S`` (dims 64-89: letters copied by layer 0), ``OUT`` (dims 96-121: the answer).

* ``L0.H0``, ``L0.H1``, ``L0.H2`` (*copy heads*): a constant query (the q bias) against keys
  reading ``POS`` attend from every position to positions 1, 2 and 3 respectively; values read
  ``TOK`` and ``W_O`` writes the letter into ``S``. Each writes one third of the signal.
* ``L1.H0`` (*mover*): query position ``i`` against key position ``j`` via ``POS`` (score only
  where ``j = i - 1``): attends to the previous position; its value reads ``S`` there and
  ``W_O`` writes into ``OUT``.
* The unembedding reads only ``OUT`` (letter ``j``'s logit is ``OUT[j]``), so layer 0 reaches the
  logits only through the mover.
* Every other head (``L0.H3``, ``L1.H1..3``) has random ``W_Q, W_K, W_V`` (std 0.2) and ``W_O``
  near zero (std 1e-3): it attends somewhere but writes (almost) nothing.

Truth: nodes ``{L0.H0, L0.H1, L0.H2, L1.H0}``; edges ``EMBED -> L0.Hh (v)``, ``L0.Hh -> L1.H0 (v)``
(h = 0, 1, 2) and ``L1.H0 -> LOGITS``. The model is rebuilt in milliseconds from this code, so
no checkpoint is needed; :func:`build_planted` writes the Hugging Face folder that
:func:`interp.load_model` reads.

Example:
    >>> import tempfile
    >>> from interp.models import load_model
    >>> folder = build_planted(tempfile.mkdtemp() + "/planted")
    >>> load_model(str(folder), device="cpu").cfg.n_heads
    4
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from interp.errors import DataError
from interp.groundtruth.truth import Truth

__all__ = ["build_planted", "planted_weights", "planted_truth", "planted_task", "planted_heads", "COPY_POSITIONS",
           "D_MODEL", "N_HEADS", "N_POSITIONS", "N_LETTERS"]

D_MODEL, N_HEADS, N_POSITIONS, N_LETTERS = 128, 4, 32, 26
D_HEAD = D_MODEL // N_HEADS
TOK, BOS_DIM, POS, S, OUT = 0, 26, 32, 64, 96
LETTER0, BOS_ID = 97, 256
#: positions (after BOS at 0) the copy heads L0.H0, L0.H1, L0.H2 attend to
COPY_POSITIONS = (1, 2, 3)
QUERY_SCALE = 10.0     # copy heads' constant query: score ~1.4 * 10 on the target vs ~0 elsewhere
PREV_SCALE = 8.0       # mover's positional query: score ~2 * 8 on i - 1
COPY_GAIN, MOVE_GAIN, UNEMBED_GAIN = 1 / 8, 0.1, 3.0
NOISE_QKV, NOISE_O = 0.2, 1e-3


def _hf_config() -> Any:
    from transformers import GPT2Config

    return GPT2Config(n_embd=D_MODEL, n_inner=4, n_layer=2, n_head=N_HEADS, n_positions=N_POSITIONS,
                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, activation_function="relu",
                      vocab_size=259, bos_token_id=256, eos_token_id=257, pad_token_id=258,
                      tie_word_embeddings=False, architectures=["GPT2LMHeadModel"])


def planted_weights(model: Any, *, seed: int = 0) -> None:
    """Overwrite a fresh HF ``GPT2LMHeadModel`` of :func:`_hf_config` with the planted circuit (in place)."""
    g = torch.Generator().manual_seed(seed)
    dh, D = D_HEAD, D_MODEL
    sd = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    for j in range(N_LETTERS):
        sd["transformer.wte.weight"][LETTER0 + j, TOK + j] = 1.0
        sd["lm_head.weight"][LETTER0 + j, OUT + j] = UNEMBED_GAIN
    sd["transformer.wte.weight"][BOS_ID, BOS_DIM] = 1.0
    for p in range(N_POSITIONS):
        sd["transformer.wpe.weight"][p, POS + p] = 1.0
    for name in ("ln_1", "ln_2"):
        for layer in range(2):
            sd[f"transformer.h.{layer}.{name}.weight"][:] = 1.0
    sd["transformer.ln_f.weight"][:] = 1.0
    for layer in range(2):
        w = sd[f"transformer.h.{layer}.attn.c_attn.weight"]      # [D, 3D]: x @ W -> q | k | v
        b = sd[f"transformer.h.{layer}.attn.c_attn.bias"]
        wo = sd[f"transformer.h.{layer}.attn.c_proj.weight"]     # [D, D]: z @ W -> residual
        for h in range(N_HEADS):
            q, k, v = slice(h * dh, (h + 1) * dh), slice(D + h * dh, D + (h + 1) * dh), \
                slice(2 * D + h * dh, 2 * D + (h + 1) * dh)
            if layer == 0 and h < len(COPY_POSITIONS):           # copy head: position COPY_POSITIONS[h]
                b[h * dh] = QUERY_SCALE
                w[POS + COPY_POSITIONS[h], D + h * dh] = 1.0
                for j in range(N_LETTERS):
                    w[TOK + j, 2 * D + h * dh + j] = 1.0
                    wo[h * dh + j, S + j] = COPY_GAIN
            elif layer == 1 and h == 0:                           # mover: previous position, S -> OUT
                for i in range(min(N_POSITIONS, dh)):
                    w[POS + i, i] = PREV_SCALE
                    if i + 1 < dh:
                        w[POS + i, D + i + 1] = 1.0
                for j in range(N_LETTERS):
                    w[S + j, 2 * D + j] = 1.0
                    wo[j, OUT + j] = MOVE_GAIN
            else:                                                 # bystander: attends, writes ~nothing
                for part in (q, k, v):
                    w[:, part] = NOISE_QKV * torch.randn(D, dh, generator=g)
                wo[h * dh:(h + 1) * dh] = NOISE_O * torch.randn(dh, D, generator=g)
    model.load_state_dict(sd)


def build_planted(folder: str | Path, *, seed: int = 0) -> Path:
    """Write the planted model as a Hugging Face folder (safetensors + byte tokenizer) and return it."""
    from transformers import AutoModelForCausalLM

    from interp.toy import write_model_folder

    folder = Path(folder)
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(_hf_config(), dtype=torch.float32)
    planted_weights(model, seed=seed)
    model.eval()
    return write_model_folder(model, folder, {"toy": "planted", "seed": seed})


#: a head has its planted role when more than half its attention (from the last token) is on the target
ROLE_THRESHOLD = 0.5


def planted_heads(model: Any, dataset: Any) -> Any:
    """Measure every head on the clean prompts of ``dataset`` (from the last token): layer-0 heads are
    tested as copy heads (``copy``: the largest mean attention on one of :data:`COPY_POSITIONS`),
    layer-1 heads as movers (``mover``: mean attention on the previous position); threshold 0.5.

    Returns:
        ``groundtruth.heads`` Result.
    """
    import pandas as pd

    from interp.groundtruth.truth import _patterns, heads_result
    from interp.nodes import node_id

    tb = dataset.tokenize(model)
    last = tb.clean.lengths.cpu() - 1
    pats = _patterns(model, tb.clean.tokens)
    b = torch.arange(len(last))
    rows = []
    for layer, p in enumerate(pats):
        for h in range(p.shape[1]):
            at = p[b, h, last]                                   # [batch, key]
            copy = max(float(at[:, c].mean()) for c in COPY_POSITIONS)
            mover = float(at[b, last - 1].mean())
            rows.append({"layer": layer, "head": h, "node": node_id("head", layer=layer, head=h),
                         "copy": copy, "mover": mover})
    return heads_result("planted", pd.DataFrame(rows), roles={0: ("copy", ROLE_THRESHOLD), 1: ("mover", ROLE_THRESHOLD)},
                        model=model, n_prompts=len(last))


def planted_truth() -> Truth:
    """The planted circuit (by construction)."""
    copies = [f"L0.H{h}" for h in range(len(COPY_POSITIONS))]
    edges = [("EMBED", c, "v") for c in copies] + [(c, "L1.H0", "v") for c in copies] + [("L1.H0", "LOGITS", "logits")]
    return Truth("planted", tuple(copies + ["L1.H0"]), tuple(edges))


def planted_task(n: int, *, seed: int, min_filler: int = 2, max_filler: int = 20) -> Any:
    """Clean/corrupted pairs: ``xxx`` + filler vs ``yyy`` + the same filler; answer ``x``, counterfactual ``y``.

    Filler letters are distinct and differ from ``x`` and ``y``; at least 2 of them, so the mover's
    previous position (>= 4) comes after all three copied positions.
    """
    from interp.datasets import TaskDataset

    if not 2 <= min_filler <= max_filler <= min(N_LETTERS - 2, N_POSITIONS - 4):
        raise DataError(f"planted_task: need 2 <= min_filler <= max_filler <= {min(N_LETTERS - 2, N_POSITIONS - 4)}, "
                        f"got {min_filler}, {max_filler}")
    g = torch.Generator().manual_seed(seed)
    clean, corrupted, answers, counter = [], [], [], []
    for _ in range(n):
        perm = [chr(LETTER0 + int(t)) for t in torch.randperm(N_LETTERS, generator=g)]
        x, y = perm[0], perm[1]
        m = int(torch.randint(min_filler, max_filler + 1, (1,), generator=g))
        filler = "".join(perm[2:2 + m])
        clean.append(3 * x + filler)
        corrupted.append(3 * y + filler)
        answers.append(x)
        counter.append(y)
    return TaskDataset("planted", tuple(clean), tuple(corrupted), tuple(answers), tuple(counter))
