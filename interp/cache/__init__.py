"""Activation store: ``collect`` activations into an :class:`ActivationStore` (RAM or safetensors shards).

* :func:`collect` — batched, padding-aware forward passes that keep only the requested
  sites, stop after the deepest one, bound RAM (``max_memory``) and stream shards to
  disk (``out=``), resumably; optional streaming reducers. One writer per folder (a lock);
  NaN/inf activations are refused unless ``allow_nonfinite=True``.
* on disk (:mod:`interp.cache.layout`) — a manifest written once, token ids and texts in their
  own checksummed files, an append-only record of finished shards with a sha256 each; reads
  refuse truncated, altered or out-of-folder files, a resume recomputes them.
* :class:`ActivationStore` — token ids, lengths, ``{Site: tensor}`` and the model id;
  ``store[site]``, ``store[site, prompts, positions]``; lazy loading from disk.
* reducers — :class:`Mean`, :class:`MeanNorm`, :class:`TopK`, :class:`FnReducer`.

Example:
    >>> import tempfile
    >>> from interp import load_model, Site
    >>> from interp.cache import collect, ActivationStore
    >>> model = load_model("toy:llama")
    >>> out = tempfile.mkdtemp()
    >>> store = collect(model, ["a b c", "d e"], "resid_post", out=out, progress=False)
    >>> ActivationStore.open(out)[Site("resid_post", 0)].shape
    torch.Size([2, 6, 64])
"""

from interp.cache.collector import DEFAULT_SHARD_BYTES, collect
from interp.cache.reducers import FnReducer, Mean, MeanNorm, Reducer, TopK, TopKResult
from interp.cache.store import ActivationStore, parse_bytes

__all__ = ["collect", "ActivationStore", "Reducer", "Mean", "MeanNorm", "TopK", "TopKResult", "FnReducer",
           "parse_bytes", "DEFAULT_SHARD_BYTES"]
