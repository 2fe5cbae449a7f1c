"""Optional extras: a missing one is a one-line error that names the pip command, before any heavy work."""

from __future__ import annotations

import importlib.util

from come.errors import ComeError


def available(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def require(module: str, extra: str, what: str) -> None:
    """Refuse `what` when `module` (of the extra `extra`) is not installed."""
    if not available(module):
        raise ComeError(f"{what} needs the {module} package, which is not installed: pip install 'come[{extra}]'")
