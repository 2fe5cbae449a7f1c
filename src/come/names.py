"""How what we write names a model or a data source: a local path by its last component only (never an absolute
path), a hub id or an alias as it is."""

from __future__ import annotations

from pathlib import Path


def is_local(name: str) -> bool:
    """Whether `name` names a local file or folder rather than a hub id (ORG/NAME) or an alias."""
    if name.startswith(("/", "~", ".")) or "\\" in name or name.count("/") > 1:
        return True
    return Path(name).expanduser().exists()


def display_name(name: str | None) -> str | None:
    """What we write for a model or data source: a local path becomes its last component, a hub id or an alias
    stays as it is."""
    if name is None:
        return None
    name = str(name)
    if is_local(name):
        return Path(name).expanduser().name or name
    return name


def did_you_mean(name: str, choices) -> str:
    """" (did you mean X?)" for the closest of `choices` to a mistyped `name` (case and dashes ignored), else ""."""
    import difflib

    key = {c.lower().replace("-", "").replace("_", ""): c for c in choices}
    typed = str(name).lower().replace("-", "").replace("_", "")
    close = difflib.get_close_matches(typed, list(key), n=1, cutoff=0.6)
    return f" (did you mean {key[close[0]]}?)" if close else ""
