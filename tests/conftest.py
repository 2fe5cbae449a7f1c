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


def prune_config(path, text, *, samples: int = 4, seq_len: int = 32, batch_size: int = 2, seed: int = 0, **kw):
    """The PruneConfig the tiny-model tests prune with: `samples` windows of `seq_len` tokens of `text` (seeded by
    `seed`), on the CPU, no progress bars; `kw` are further PruneConfig fields."""
    from come import PruneConfig
    from come.config import CalibConfig

    calib = CalibConfig(data=str(text), samples=samples, seq_len=seq_len, batch_size=batch_size, seed=seed)
    return PruneConfig(model=str(path), calib=calib, progress=False, device="cpu", **kw)


def same_weights(m1, m2) -> bool:
    """The two modules hold the same tensors under the same names, bit for bit."""
    s1, s2 = m1.state_dict(), m2.state_dict()
    return s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)


def replay(res, base, *, tensors: bool = True, dtype: str = "float32"):
    """`res.plan` read back from its JSON applied to `base`: a model folder (loaded afresh in `dtype` on the CPU)
    or a model (changed in place). With `tensors`, the plan carries the weights its steps computed (re-fits), as
    its saved folder does; without, the JSON alone must do. Returns the model."""
    import json

    from come.models import load_model
    from come.plan import Plan, apply_plan

    model = load_model(str(base), dtype, "cpu")[0] if isinstance(base, (str, os.PathLike)) else base
    plan = Plan.load_dict(json.loads(res.plan.to_json()))
    if tensors:
        plan.tensors = dict(res.plan.tensors)
    apply_plan(model, plan)
    return model


def replays_bit_for_bit(res, base, **kw) -> bool:
    """`replay` of `res.plan` on `base` gives `res.model`'s weights exactly."""
    return same_weights(replay(res, base, **kw), res.model)


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
