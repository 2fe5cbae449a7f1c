"""Integration: distillation recovers perplexity of a CoMe-pruned SmolLM2 (30 -> 24 layers)."""

import pytest
import torch

from come import PruneConfig, prune
from come.config import CalibConfig
from come.distill import DistillConfig, distill

pytestmark = pytest.mark.smollm2


def test_layerwise_distillation_lowers_perplexity(tmp_path):
    calib = CalibConfig(data="wiki-passages", samples=8, seq_len=256, batch_size=4)
    res = prune(PruneConfig(model="smollm2-135m", target_layers=24, calib=calib, device="cpu", dtype="float32",
                            progress=False))
    student = res.save(tmp_path / "come24")
    del res
    torch.manual_seed(0)
    out = distill(DistillConfig(student=str(student), out=str(tmp_path / "d24"), stage="layerwise", steps=4,
                                seq_len=256, batch_size=4, lr=3e-4, ppl_windows=10, ppl_seq_len=256, device="cpu",
                                dtype="float32", progress=False))
    ppl = out.summary["perplexity"]
    before, after = ppl["before"]["ppl"], ppl["after_layerwise"]["ppl"]
    assert ppl["before"]["windows"] == 10 and ppl["before"]["part"] == "eval"
    # 30 -> 20 layers with 8 steps per stage measured before/after-layer-wise in docs/distillation.md;
    # here we ask for a clear gain from 4 steps
    assert after < 0.9 * before, (before, after)
