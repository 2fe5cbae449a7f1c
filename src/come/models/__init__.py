"""Model loading (`come.models.loading`) and architecture adapters (one per family, behind `ModelAdapter`)."""

from __future__ import annotations

from come.models import gemma as _gemma  # noqa: F401  (each module registers its family's adapters)
from come.models import granite as _granite  # noqa: F401
from come.models import llama as _llama  # noqa: F401
from come.models import olmo2 as _olmo2  # noqa: F401
from come.models import phi3 as _phi3  # noqa: F401
from come.models.base import AttnGeometry, ModelAdapter
from come.models.loading import (  # noqa: F401  (the loading API, reached as come.models.NAME)
    CONFIG_KEYS_IGNORED,
    DTYPES,
    FINGERPRINT_SAMPLE,
    WEIGHTS_INDEX,
    allow_remote_code,
    check_device_dtype,
    check_loading_info,
    check_remote_code,
    checkpoint_dtype,
    count_params,
    fingerprint,
    load_config,
    load_model,
    meta_model,
    model_folder,
    parse_device,
    parse_dtype,
    resolve_model,
    save_dtype_for,
    weight_files,
)
from come.models.registry import ADAPTERS, check_supported, get_adapter
from come.placement import move_model

__all__ = [
    "ADAPTERS",
    "AttnGeometry",
    "ModelAdapter",
    "check_supported",
    "count_params",
    "get_adapter",
    "load_config",
    "load_model",
    "meta_model",
    "move_model",
    "parse_dtype",
    "resolve_model",
]

