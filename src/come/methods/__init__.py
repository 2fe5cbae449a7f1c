"""Method registry: every method is one `Method` record (come.methods.registry) whose function turns a
PruneContext into plan steps, applying them as it goes, and whose `options` dataclass declares its settings. Each
module of this package registers its records on import; the modules are imported on first use of the registry (so
importing this package does not import torch)."""

from __future__ import annotations

from come.methods.registry import (
    COMMON_SETTINGS,
    METHODS,
    NO_LIMIT,
    Limit,
    Method,
    NoOptions,
    get_method,
    is_progressive,
    max_removable,
    method_options,
    option_flags,
    parse_option_args,
    register,
    settings_used,
)

__all__ = ["COMMON_SETTINGS", "METHODS", "NO_LIMIT", "Limit", "Method", "NoOptions", "get_method", "is_progressive",
           "max_removable", "method_options", "option_flags", "parse_option_args", "register", "settings_used"]
