"""interp: a mechanistic-interpretability workbench.

Load a model, cache activations, run analyses that return :class:`Result` tables,
and collect their evidence in one circuit graph::

    import interp
    model = interp.load_model("smollm2")            # bundled SmolLM2-135M-Instruct, offline
    store = interp.collect(model, ["The Eiffel Tower is in"], ["resid_post", "pattern"])
    store[interp.Site("resid_post", 3)].shape       # (batch, pos, d_model)

Importing ``interp`` does no work: names are resolved on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "InterpError": "interp.errors", "ModelNotFoundError": "interp.errors", "SiteError": "interp.errors",
    "ShapeError": "interp.errors", "DataError": "interp.errors", "StoreError": "interp.errors",
    "ConfigError": "interp.errors", "SchemaError": "interp.errors",
    "Site": "interp.sites", "parse_sites": "interp.sites",
    "load_model": "interp.models", "tokenize": "interp.models", "model_info": "interp.models",
    "ToyConfig": "interp.toy",
    "hooked": "interp.hooks", "capturing": "interp.hooks", "patched": "interp.hooks", "ablated": "interp.hooks",
    "run_capture": "interp.hooks",
    "collect": "interp.cache", "ActivationStore": "interp.cache",
    "Result": "interp.results", "RunMeta": "interp.results", "load_results": "interp.results",
    "Axis": "interp.steering", "load_axis": "interp.steering", "steered": "interp.steering",
    "export": "interp.plots", "THEME": "interp.plots",
    "CircuitGraph": "interp.graph", "load_graph": "interp.graph",
    "causal_trace": "interp.tracing", "TracingConfig": "interp.tracing",
    "activation_patching": "interp.patching", "PatchConfig": "interp.patching", "path_patching": "interp.patching",
    "PathConfig": "interp.patching", "attribution_patching": "interp.patching",
    "edge_attribution_patching": "interp.patching", "AttributionConfig": "interp.patching",
    "acdc": "interp.circuits",
    "ioi_dataset": "interp.datasets", "facts_dataset": "interp.datasets", "known_facts": "interp.datasets",
    "colored_objects_dataset": "interp.datasets", "build_task": "interp.datasets.registry",
    "Model": "interp.types", "Schema": "interp.schemas",
    "generate": "interp.generation", "Generation": "interp.generation",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'interp' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
