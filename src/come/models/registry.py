from __future__ import annotations

from come.errors import ComeError
from come.models.base import ModelAdapter

ADAPTERS: dict[str, type[ModelAdapter]] = {}


def register(cls: type[ModelAdapter]) -> type[ModelAdapter]:
    for t in cls.model_types:
        ADAPTERS[t] = cls
    return cls


def check_supported(config) -> None:
    """Refuse an unsupported architecture up front, before any weights are loaded."""
    model_type = getattr(config, "model_type", None)
    if model_type not in ADAPTERS:
        arch = ",".join(getattr(config, "architectures", None) or []) or model_type
        raise ComeError(
            f"unsupported architecture '{arch}' (model_type '{model_type}'): supported model types are "
            f"{', '.join(sorted(ADAPTERS))}"
        )
    layer_types = getattr(config, "layer_types", None)
    if layer_types and len(set(layer_types)) > 1:
        raise ComeError(
            f"model_type '{model_type}' mixes attention types {sorted(set(layer_types))}: sliding-window layers are "
            "not supported yet; disable use_sliding_window in the config"
        )


def get_adapter(model) -> ModelAdapter:
    check_supported(model.config)
    return ADAPTERS[model.config.model_type](model)
