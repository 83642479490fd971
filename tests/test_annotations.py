"""Issue 14 item 12: every public function of the package that takes or returns tensors states their
shapes with jaxtyping (``Float[Tensor, "batch pos d_model"]``, the dim names of :mod:`interp.types`)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import interp

PKG = Path(interp.__file__).parent


def _bare_tensor(annotation: str) -> bool:
    """A ``Tensor`` in ``annotation`` that is not the first argument of a jaxtyping type."""
    stripped = re.sub(r"\b(?:Float|Int|Bool|Shaped|Num)\[(?:torch\.)?Tensor,", "", annotation)
    return bool(re.search(r"(?<!\w)(?:torch\.)?Tensor\b", stripped))


def test_public_tensor_signatures_have_shapes():
    missing = []
    for path in sorted(PKG.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
                parts = [ast.unparse(a.annotation) for a in (*node.args.args, *node.args.kwonlyargs) if a.annotation]
                if node.returns is not None:
                    parts.append(ast.unparse(node.returns))
                if any(_bare_tensor(p) for p in parts):
                    missing.append(f"{path.relative_to(PKG.parent)}:{node.lineno} {node.name}")
    assert not missing, "public functions with unshaped Tensor annotations:\n" + "\n".join(missing)


def test_the_check_sees_a_bare_tensor():
    assert _bare_tensor("torch.Tensor") and _bare_tensor("dict[str, Tensor]") and _bare_tensor("Tensor | None")
    assert not _bare_tensor('Float[Tensor, "batch pos"]') and not _bare_tensor('dict[Site, Int[torch.Tensor, " b"]]')
