from __future__ import annotations

from come.errors import ComeError
from come.models.base import ModelAdapter

ADAPTERS: dict[str, type[ModelAdapter]] = {}


def register(cls: type[ModelAdapter]) -> type[ModelAdapter]:
    for t in cls.model_types:
        ADAPTERS[t] = cls
    return cls


def supported_families() -> str:
    """'Gemma 2 (gemma2), ..., Qwen3 (qwen3)': each family with the model_types it serves."""
    fams: dict[str, list[str]] = {}
    for t, cls in ADAPTERS.items():
        fams.setdefault(cls.family or t, []).append(t)
    return ", ".join(f"{f} ({', '.join(ts)})" for f, ts in sorted(fams.items(), key=lambda kv: kv[0].lower()))


def check_supported(config) -> None:
    """Refuse an unsupported architecture up front, before any weights are loaded."""
    model_type = getattr(config, "model_type", None)
    if model_type not in ADAPTERS:
        arch = ",".join(getattr(config, "architectures", None) or []) or model_type
        raise ComeError(
            f"unsupported architecture '{arch}' (model_type '{model_type}'): come merges layers of the families "
            f"{supported_families()}; pass a model of one of these"
        )


def get_adapter(model) -> ModelAdapter:
    check_supported(model.config)
    return ADAPTERS[model.config.model_type](model)
