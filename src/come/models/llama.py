from come.models.base import ModelAdapter
from come.models.registry import register


@register
class LlamaAdapter(ModelAdapter):
    model_types = ("llama",)


@register
class MistralAdapter(ModelAdapter):
    model_types = ("mistral",)


@register
class Qwen2Adapter(ModelAdapter):
    """q/k/v carry biases; they follow their rows in a merge (handled generically)."""

    model_types = ("qwen2",)


@register
class Qwen3Adapter(ModelAdapter):
    model_types = ("qwen3",)
    has_qk_norm = True
