"""Method registry: every method is one `Method` record (come.methods.registry) whose function turns a
PruneContext into plan steps, applying them as it goes. Each method module registers its records on import; the
built-in ones are imported on first use of the registry (so importing this package does not import torch)."""

from __future__ import annotations

from come.methods.registry import (
    BUILTIN_NAMES,
    COMMON_SETTINGS,
    METHODS,
    NO_LIMIT,
    Limit,
    Method,
    Option,
    get_method,
    is_progressive,
    max_removable,
    method_options,
    parse_option_args,
    register,
    settings_used,
)

__all__ = ["BUILTIN_NAMES", "COMMON_SETTINGS", "METHODS", "NO_LIMIT", "Limit", "Method", "Option", "get_method",
           "is_progressive", "max_removable", "method_options", "parse_option_args", "register", "settings_used"]
