"""What every registry of the project shares (estimators, rewards, sinks, model sources, data sources,
generators): a name is registered once. A second entry under a taken name would silently change
what existing configs and specs mean, so it is refused, naming the entry that holds the name."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["refuse_taken"]


def refuse_taken(registry: Mapping[str, Any], name: str, kind: str,
                 owner: Callable[[Any], Any] = lambda entry: entry) -> None:
    """ValueError when ``registry`` holds ``name`` already; ``owner(entry)`` is the function or class
    whose module and name the message gives."""
    if name in registry:
        known = owner(registry[name])
        raise ValueError(f"{kind} {name!r} is already registered (by {known.__module__}.{known.__qualname__})")
