"""Forward-pass plumbing of the patching methods (internal): names kept for the patching modules.

The pass itself lives in :mod:`interp.engine` (the one intervention engine):
:func:`last_hidden` is :func:`interp.engine.forward_hidden` (final normalised hidden
state at each row's last real token, the pass stopped at ``ln_final``, the last MLP run
at that token only where exact), :class:`Counter` counts passes.
"""

from __future__ import annotations

from interp.engine import Counter, forward_hidden as last_hidden, tail_ok as _tail_ok

__all__ = ["Counter", "last_hidden", "_tail_ok"]
