"""The one error family of interp.

Every error the library raises on purpose derives from :class:`InterpError`, so
``except InterpError`` catches them all. Messages say what was expected and what
was got, and name the nearest valid choices for typos.

Tree::

    InterpError
    ├── ModelNotFoundError   unknown or unreachable model spec
    ├── SiteError            unknown component / hook name, layer or head out of range
    ├── ShapeError           a tensor of the wrong shape at a site
    ├── DataError            empty / malformed / mismatched prompts and datasets
    │   └── SchemaError      a Result table that does not match its kind's schema
    ├── StoreError           activation store or output folder problems
    └── ConfigError          invalid analysis configuration
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "InterpError",
    "ModelNotFoundError",
    "SiteError",
    "ShapeError",
    "DataError",
    "SchemaError",
    "StoreError",
    "ConfigError",
    "nearest",
]


class InterpError(Exception):
    """Base class of every error interp raises on purpose."""


class ModelNotFoundError(InterpError, LookupError):
    """A model spec that names nothing loadable here."""


class SiteError(InterpError, KeyError):
    """An unknown site, component or hook name, or a layer/head out of range."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class ShapeError(InterpError, ValueError):
    """A tensor whose shape does not match what its site expects."""


class DataError(InterpError, ValueError):
    """Prompts or datasets that are empty, malformed or inconsistent."""


class SchemaError(DataError):
    """A Result table whose columns, types or values do not match its kind's schema."""


class StoreError(InterpError, OSError):
    """An activation store or output folder that cannot be used as asked."""


class ConfigError(InterpError, ValueError):
    """An analysis configuration with invalid values."""


def nearest(name: str, options: Iterable[str], n: int = 3) -> str:
    """Return a ``" Did you mean ...?"`` suffix naming the closest options, or ``""``.

    Example:
        >>> nearest("resid_psot", ["resid_post", "resid_pre", "z"])
        " Did you mean 'resid_post' or 'resid_pre'?"
    """
    options = list(options)
    close = difflib.get_close_matches(name, options, n=n, cutoff=0.5)
    if not close:
        return ""
    quoted = [repr(c) for c in close]
    joined = quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]
    return f" Did you mean {joined}?"
