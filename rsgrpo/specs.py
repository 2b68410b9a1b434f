"""Specs given on the command line or in code -> a plain dict: the one reader of every ``--spec``.

A spec (what a model or a dataset is, see :mod:`rsgrpo.prepare.model_sources` and
:mod:`rsgrpo.prepare.data_sources`) arrives as a dict (from the workflow config), an inline
YAML/JSON mapping (the workflow passes ``json.dumps`` of the config's entry), or a path to a
``.yaml``/``.yml``/``.json`` file. Every verb reads it here, so all of them accept the same forms and
fail with the same messages, each naming where the spec came from (``spec file 'x.yaml'`` or
``inline --spec``). What the keys mean is the business of the layer that uses the spec; this module
only checks that it is a mapping. Core module: no heavy imports (PyYAML is imported when a string
is parsed).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["SPEC_SUFFIXES", "INLINE", "load_spec"]

SPEC_SUFFIXES = (".yaml", ".yml", ".json")
INLINE = "inline --spec"
# An inline spec longer than this is never taken for a file path (paths are short; specs may not be).
_MAX_PATH_CHARS = 4096


def _spec_file(text: str) -> Path | None:
    """The file ``text`` names, or None when ``text`` is an inline spec.

    A file path is one line, does not open a mapping or list, and ends in a spec suffix; everything
    else is inline YAML/JSON (which is what a ``json.dumps`` of the workflow config looks like)."""
    stripped = text.strip()
    if "\n" in stripped or len(stripped) >= _MAX_PATH_CHARS or stripped.startswith(("{", "[")):
        return None
    path = Path(stripped).expanduser()
    return path if path.suffix.lower() in SPEC_SUFFIXES else None


def load_spec(spec: dict | str | os.PathLike) -> dict:
    """A spec as a new dict: ``spec`` itself (copied), or the YAML/JSON mapping in a string or file.

    A ``PathLike`` is always a file; a string is a file when it looks like a path to a
    ``.yaml``/``.yml``/``.json`` file (:func:`_spec_file`), else the spec itself. ValueError, naming
    the file or ``inline --spec``, for a missing file, text that is not YAML/JSON, or anything
    but a mapping.
    """
    if isinstance(spec, dict):
        return dict(spec)
    if isinstance(spec, os.PathLike):
        path = Path(spec)
    elif isinstance(spec, str):
        path = _spec_file(spec)
    else:
        raise ValueError(f"a spec must be a mapping, a YAML/JSON string or a file path, got "
                         f"{type(spec).__name__}: {spec!r}")
    if path is None:
        where, text = INLINE, spec
    else:
        where = f"spec file {str(path)!r}"
        if not path.is_file():
            raise ValueError(f"{where} does not exist")
        text = path.read_text(encoding="utf-8")
    return _parse(text, where)


def _parse(text: str, where: str) -> dict:
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"{where}: not valid YAML/JSON ({exc})") from exc
    if not isinstance(data, dict):
        hint = ""
        if where == INLINE and Path(text.strip()).is_file():
            hint = f" (a spec file must end in {', '.join(SPEC_SUFFIXES)})"
        raise ValueError(f"{where}: the spec must be a mapping, got {type(data).__name__} {data!r}{hint}")
    return data
