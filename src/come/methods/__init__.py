"""Method registry: every method is one `Method` record (come.methods.registry) whose function turns a
PruneContext into plan steps, applying them as it goes. Each method module registers its records on import."""

from __future__ import annotations

from come.methods import angular as _angular  # noqa: F401  (each registers its records)
from come.methods import come as _come  # noqa: F401
from come.methods import laco as _laco  # noqa: F401
from come.methods import magnitude as _magnitude  # noqa: F401
from come.methods import mka as _mka  # noqa: F401
from come.methods import reverse as _reverse  # noqa: F401
from come.methods import shortgpt as _shortgpt  # noqa: F401
from come.methods import sleb as _sleb  # noqa: F401
from come.methods import wsum as _wsum  # noqa: F401
from come.methods.registry import (
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

__all__ = ["COMMON_SETTINGS", "METHODS", "NO_LIMIT", "Limit", "Method", "Option", "get_method", "is_progressive",
           "max_removable", "method_options", "parse_option_args", "register", "settings_used"]
