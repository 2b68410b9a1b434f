"""The value kinds of the train config's fields ("int", "float?", "str|dict?" ...): checking a value
read from YAML or ``--set`` against its field's kind, and the one error format every config problem
uses (the file, the key, the value)."""

from __future__ import annotations

import math
import numbers

__all__ = ["coerce", "config_error"]


def config_error(source: str, key: str, value, problem: str) -> ValueError:
    return ValueError(f"{source}: key {key!r}: {problem} (got {value!r})")


def coerce(source: str, key: str, value, kind: str):
    """Check ``value`` against ``kind`` ("int", "float?", "str|dict?" ...); return the coerced value.

    Floats accept integers and numeric strings: PyYAML reads ``1e-6`` (no dot) as a string, and
    refusing the common spelling of a learning rate would only annoy.
    """
    optional = kind.endswith("?")
    base = kind.rstrip("?")
    if value is None:
        if optional:
            return None
        raise config_error(source, key, value, f"must be a {base}, not null")
    for k in base.split("|"):
        if k == "bool" and isinstance(value, bool):
            return value
        if k == "int" and isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return int(value)
        if k == "float":
            if isinstance(value, numbers.Real) and not isinstance(value, bool):
                v = float(value)
            elif isinstance(value, str):
                try:
                    v = float(value)
                except ValueError:
                    continue
            else:
                continue
            if not math.isfinite(v):
                raise config_error(source, key, value, "must be a finite number")
            return v
        if k == "str" and isinstance(value, str):
            return value
        if k == "dict" and isinstance(value, dict):
            return dict(value)
        if k == "list" and isinstance(value, list):
            return list(value)
    raise config_error(source, key, value, f"must be of type {kind.replace('|', ' or ').rstrip('?')}"
                       + (" or null" if optional else ""))
