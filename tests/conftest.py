import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    LlamaConfig,
    MistralConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen3Config,
)

TINY = dict(vocab_size=512, hidden_size=96, intermediate_size=128, num_hidden_layers=6, num_attention_heads=6,
            num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False)
FAMILIES = {
    "llama": LlamaConfig,
    "mistral": MistralConfig,
    "qwen2": Qwen2Config,
    "qwen3": Qwen3Config,
}


def tiny_model(family: str = "llama", seed: int = 0, **overrides):
    """A random model of the family, with non-trivial norm weights and biases so merges are really tested."""
    cfg_cls = FAMILIES[family]
    kw = dict(TINY, **overrides)
    if family == "qwen3":
        kw.setdefault("head_dim", kw["hidden_size"] // kw["num_attention_heads"] + 6)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg_cls(**kw), dtype=torch.float32, attn_implementation="sdpa")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.3 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
    return model.eval()


def tiny_tokenizer(vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained in memory on a few sentences (no download)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    text = [SAMPLE_TEXT] * 4
    tok.train_from_iterator(text, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", bos_token="<eos>", pad_token="<eos>")


SAMPLE_TEXT = (
    "The quick brown fox jumps over the lazy dog. Layers of a language model can be merged by concatenating "
    "their most sensitive channels. Wikipedia is a free online encyclopedia written by volunteers. "
    "Rivers flow into the sea; mountains rise above the clouds; the city sleeps under the stars. "
) * 3


EVAL_TEXT = (
    "A river town keeps its bridges in good repair. The ferry crosses twice a day, and the market opens early. "
    "Children learn to swim in the shallow bend where the water runs slow and clear over stones. "
) * 3


@pytest.fixture
def tiny_dir(tmp_path):
    """A saved tiny Llama folder with tokenizer, and a calibration text file."""
    model = tiny_model("llama")
    tok = tiny_tokenizer()
    path = tmp_path / "tiny-llama"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    text = tmp_path / "calib.txt"
    text.write_text(SAMPLE_TEXT * 40)
    # a separate evaluation text beside it (calibration and evaluation text are never the same file)
    (tmp_path / "eval.txt").write_text(EVAL_TEXT * 40)
    return path, text


class Interrupted(Exception):
    """Raised by `stop_at` to interrupt a `come.distill` run."""


def stop_at(run_step: int):
    """An on_step callback for `come.distill` that interrupts the run after its `run_step`-th step (as a crash or
    Ctrl-C would), leaving the last checkpoint to resume from."""

    def on_step(info):
        if info["run_step"] == run_step:
            raise Interrupted(run_step)

    return on_step
