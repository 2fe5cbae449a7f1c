from come.models.base import ModelAdapter
from come.models.registry import register


@register
class LlamaAdapter(ModelAdapter):
    model_types = ("llama",)
    family = "Llama"


@register
class MistralAdapter(ModelAdapter):
    model_types = ("mistral",)
    family = "Mistral"


@register
class Qwen2Adapter(ModelAdapter):
    """q/k/v carry biases; they follow their rows in a merge (handled generically)."""

    model_types = ("qwen2",)
    family = "Qwen2"


@register
class Qwen3Adapter(ModelAdapter):
    model_types = ("qwen3",)
    family = "Qwen3"
    has_qk_norm = True
