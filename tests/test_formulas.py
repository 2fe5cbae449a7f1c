"""The formulas of docs/method.md §2-4 pinned on small hand-computed cases (not the code compared with itself).

Every test here fails on a deliberately wrong variant of the formula it names: `experiments/formula_mutations.py`
applies each variant to a copy of the source tree and runs the matching test.
"""

import math

import pytest
import torch
from conftest import prune_config, tiny_model

from come import prune
from come.capture import Calibration, LayerStats, block_influence
from come.data import calibration_windows
from come.merge import concat_layers
from come.models import get_adapter, load_model
from come.scores import (
    angular_distance,
    attn_group_sensitivity,
    bi_ratio,
    mlp_sensitivity,
    pair_scores,
    split_budget,
    top_k,
)

R2 = 1 / math.sqrt(2)

# --- channel sensitivity (§2) -----------------------------------------------------------------------------


def small(family="llama", **kw):
    """4 query heads over 2 KV heads (n_rep 2) of width 2: hidden 8, o_proj input 8; MLP width 3."""
    cfg = dict(hidden_size=8, intermediate_size=3, num_attention_heads=4, num_key_value_heads=2, head_dim=2,
               num_hidden_layers=2)
    cfg.update(kw)
    model = tiny_model(family, **cfg)
    return model, get_adapter(model)


def stats(mlp_abs=(0.0, 0.0, 0.0), attn_abs=(0.0,) * 8) -> LayerStats:
    return LayerStats(0.0, torch.tensor(mlp_abs), torch.tensor(attn_abs), 1)


def test_mlp_sensitivity_is_mean_abs_activation_times_l1_column_norm_of_down_proj():
    model, adapter = small()
    layer = model.model.layers[0]
    w = torch.zeros(8, 3)  # [hidden, d_ff]: column j belongs to channel j
    w[0, 0], w[1, 0] = 1.0, -2.0  # L1 3 (L2 2.24)
    w[:, 1] = 0.5  # L1 4 (L2 1.41)
    w[3, 2] = -1.0  # L1 1
    with torch.no_grad():
        adapter.down_proj(layer).weight.copy_(w)
    s = mlp_sensitivity(adapter, layer, stats(mlp_abs=(2.0, 1.0, 3.0)))
    assert s.tolist() == pytest.approx([6.0, 4.0, 3.0])
    assert top_k(s, 2) == [0, 1]


def test_attention_sensitivity_groups_query_heads_under_their_kv_head():
    """Query heads 2-3 belong to KV head 1 (q // n_rep, n_rep 2): only they are active, so group 1 scores and
    group 0 scores 0. (Tiling q % H_kv, the public code's mapping, would put head 2 in group 0 and pick it.)"""
    model, adapter = small()
    layer = model.model.layers[0]
    cols = torch.arange(1, 9, dtype=torch.float32)  # column c has L1 norm c + 1; every row sums to 4.5
    signs = torch.tensor([(-1.0) ** r for r in range(8)])[:, None]
    with torch.no_grad():
        adapter.o_proj(layer).weight.copy_(signs * cols[None, :] / 8)
    # channels of query head h: 2h, 2h+1; head 2 three times as active as head 3
    s = attn_group_sensitivity(adapter, layer, stats(attn_abs=(0, 0, 0, 0, 3, 3, 1, 1)))
    # group 1 = mean over its 4 channels of |o_c| * ||W_o[:, c]||_1 = (3*5 + 3*6 + 1*7 + 1*8) / 4
    assert s.tolist() == pytest.approx([0.0, 12.0])
    assert top_k(s, 1) == [1]


def test_capture_records_mean_abs_inputs_of_down_and_o_proj():
    model = tiny_model("llama", num_hidden_layers=2)
    adapter = get_adapter(model)
    torch.manual_seed(3)
    ids = torch.randint(0, 512, (3, 10))
    seen = {}

    def keep(key):
        return lambda _m, args: seen.setdefault(key, args[0].detach().clone())

    layer = model.model.layers[0]
    hooks = [layer.mlp.down_proj.register_forward_pre_hook(keep("mlp")),
             layer.self_attn.o_proj.register_forward_pre_hook(keep("attn"))]
    with torch.no_grad():
        model(ids)
    for h in hooks:
        h.remove()
    calib = Calibration(model, adapter, ids, batch_size=2, progress=False)  # two batches: 2 + 1 windows
    calib.run(0)
    st = calib.stats[0]
    assert st.tokens == 30
    torch.testing.assert_close(st.mlp_abs, seen["mlp"].abs().reshape(30, -1).mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(st.attn_abs, seen["attn"].abs().reshape(30, -1).mean(0), rtol=1e-5, atol=1e-6)


# --- block influence and the pair score (§2) --------------------------------------------------------------


def test_block_influence_sums_one_minus_clamped_cosine_nan_counts_half():
    h_in = torch.tensor([[[1.0, 0], [1, 0], [1, 0], [1, 0], [0, 0]]])
    h_out = torch.tensor([[[1.0, 0], [0, 1], [-1, 0], [1, 1], [1, 0]]])
    # cos: 1, 0, -1 (clamped to 0), 1/sqrt2, NaN (a zero vector) -> 0, 1, 1, 1 - 1/sqrt2, 0.5
    assert block_influence(h_in, h_out) == pytest.approx(3.5 - R2)


def test_calibration_bi_is_that_of_each_layers_own_input_and_output():
    model = tiny_model("llama", num_hidden_layers=3)
    adapter = get_adapter(model)
    torch.manual_seed(4)
    ids = torch.randint(0, 512, (3, 12))
    calib = Calibration(model, adapter, ids, batch_size=2, progress=False)
    calib.run(0)
    with torch.no_grad():
        hs = model(ids, output_hidden_states=True).hidden_states  # hs[i] enters layer i (i < L)
    for l in range(2):
        cos = torch.nn.functional.cosine_similarity(hs[l], hs[l + 1], dim=-1)
        assert calib.stats[l].bi == pytest.approx((1 - cos.clamp(0, 1)).sum().item(), rel=1e-4)


def test_angular_distance_clamps_and_counts_nan_as_half():
    a = torch.tensor([[1.0, 0], [1, 0], [1, 0], [1, 0], [0, 0]])
    b = torch.tensor([[1.0, 0], [1, 1], [0, 1], [-1, 0], [1, 0]])
    assert angular_distance(a, b).tolist() == pytest.approx([0.0, 0.25, 0.5, 0.5, 1 / 3])


def sbi_states():
    """Boundaries 0..3 (three layers), two windows each of shape [1, 2 tokens, 2]."""
    w = lambda *rows: torch.tensor([rows])  # noqa: E731
    return [
        [w([0.0, 1], [1, 0]), w([0.0, 1], [1, 0])],  # h[0]
        [w([1.0, 1], [1, 1]), w([1.0, 1], [1, 1])],  # h[1]
        [w([1.0, 0], [1, 0]), w([1.0, 0], [1, 0])],  # h[2]: last token equal to h[0]'s, first token not
        [w([1.0, 1], [1, 0]), w([1.0, 1], [0, 1])],  # h[3]: last token 45 degrees from h[1]'s
    ]


def test_pair_score_compares_h_l_with_h_l_plus_2_on_the_last_token_summed_over_windows():
    # pair 0: h[0] vs h[2] on the last token: equal -> 0; pair 1: h[1] vs h[3]: 0.25 per window, 2 windows
    assert pair_scores(sbi_states()) == pytest.approx([0.0, 0.5], abs=1e-3)


def test_pair_score_over_all_tokens():
    # pair 0: first tokens orthogonal (0.5 per window) + equal last tokens; pair 1: first tokens equal
    # (float32 arccos of a cosine of 0.99999994 is 1e-4 from 0, hence the tolerance)
    assert pair_scores(sbi_states(), last_token=False) == pytest.approx([1.0, 0.5], abs=1e-3)


# --- ratio, budget split, selection (§3) ------------------------------------------------------------------


def test_bi_ratio():
    assert bi_ratio(1.0, 3.0) == pytest.approx((0.25, 0.75))
    assert bi_ratio(1.0, 3.0, p=2) == pytest.approx((0.1, 0.9))
    assert bi_ratio(0.0, 0.0) == (0.5, 0.5)


@pytest.mark.parametrize("ratio,k,expected", [
    ((0.45, 0.55), 32, (14, 18)),  # the non-dominant layer keeps floor(0.45 * 32) = 14
    ((0.55, 0.45), 32, (18, 14)),
    ((0.3, 0.7), 32, (9, 23)),  # floor, not round: 9.6 -> 9
    ((0.7, 0.3), 32, (23, 9)),
    ((0.71, 0.29), 100, (71, 29)),  # 0.29 * 100 = 28.999999999999996 in floats: still 29
    ((0.5, 0.5), 5, (3, 2)),  # a tie: layer a is dominant
])
def test_split_budget(ratio, k, expected):
    assert split_budget(ratio, k) == expected


def test_top_k_keeps_the_highest_in_original_order_ties_to_the_lower_index():
    s = torch.tensor([0.1, 0.9, 0.5, 0.9, 0.2])
    assert top_k(s, 3) == [1, 2, 3]
    assert top_k(s, 1) == [1]
    assert top_k(s, 0) == []


# --- norms of the merged layer (§3.4) ---------------------------------------------------------------------


def _fill(module, value):
    with torch.no_grad():
        module.weight.fill_(value)


def test_mean_norm_averages_the_contributing_layers_plainly():
    model, adapter = small()
    a, b = model.model.layers
    for layer, (n1, n2) in zip((a, b), ((1.0, 2.0), (3.0, 6.0))):
        _fill(adapter.attn_norm(layer), n1)
        _fill(adapter.mlp_norm(layer), n2)
    merged = concat_layers(adapter, a, b, ([0], [1]), ([0], [1, 2]), (0.25, 0.75), "mean")
    assert adapter.attn_norm(merged).weight.tolist() == pytest.approx([2.0] * 8)  # (1 + 3) / 2, not by ratio
    assert adapter.mlp_norm(merged).weight.tolist() == pytest.approx([4.0] * 8)
    # layer b gives no KV group: the attention norm is layer a's alone
    merged = concat_layers(adapter, a, b, ([0, 1], []), ([0], [1, 2]), (0.25, 0.75), "mean")
    assert adapter.attn_norm(merged).weight.tolist() == pytest.approx([1.0] * 8)
    assert adapter.mlp_norm(merged).weight.tolist() == pytest.approx([4.0] * 8)


def test_qwen3_qk_norms_are_averaged_with_the_ratio():
    model, adapter = small("qwen3")
    a, b = model.model.layers
    for layer, (q, k) in zip((a, b), ((1.0, 2.0), (3.0, 10.0))):
        qn, kn = adapter.qk_norms(layer)
        _fill(qn, q)
        _fill(kn, k)
    merged = concat_layers(adapter, a, b, ([0], [1]), ([0], [1, 2]), (0.25, 0.75), "mean")
    qn, kn = adapter.qk_norms(merged)
    assert qn.weight.tolist() == pytest.approx([0.25 * 1 + 0.75 * 3] * 2)
    assert kn.weight.tolist() == pytest.approx([0.25 * 2 + 0.75 * 10] * 2)


# --- the progressive schedule (§4), on a plan --------------------------------------------------------------


def non_dominant_share(r_a: float, k: int) -> int:
    return math.floor(min(r_a, 1 - r_a) * k + 1e-9)


def test_come_plan_steps_follow_their_recorded_scores(tiny_dir):
    """Each step merges the candidate pair with the lowest recorded angular score, with ratio BI_l / (BI_l +
    BI_l+1) of the recorded BIs and budgets split by it; the first step's scores are those of the dense model's
    hidden states (hs[l] vs hs[l+2] on the last token)."""
    path, text = tiny_dir
    res = prune(prune_config(path, text, method="come", target_layers=3))
    steps = [s for s in res.plan.steps if s["op"] == "merge"]
    assert len(steps) == 3
    geo = get_adapter(res.model).geometry()
    for step in steps:
        sc = step["scores"]
        sbi, bi, cands, l = sc["pair_angular"], sc["bi"], sc["candidates"], step["layer"]
        assert l in cands and all(sbi[l] < sbi[i] or (sbi[l] == sbi[i] and l < i) for i in cands if i != l)
        assert step["ratio"][0] == pytest.approx(bi[l] / (bi[l] + bi[l + 1]))
        assert tuple(step["ratio"]) == pytest.approx(bi_ratio(bi[l], bi[l + 1]))
        r_a = step["ratio"][0]
        n_attn = [len(g) for g in step["attn_groups"]]
        assert sum(n_attn) == geo.num_kv_heads and min(n_attn) == non_dominant_share(r_a, geo.num_kv_heads)
        n_mlp = [len(c) for c in step["mlp_channels"]]
        d_ff = res.model.config.intermediate_size
        assert sum(n_mlp) == d_ff and min(n_mlp) == non_dominant_share(r_a, d_ff)
        assert (n_mlp[0] >= n_mlp[1]) == (r_a >= 0.5)  # the dominant layer keeps the rest

    model, tok, _ = load_model(str(path), "float32", "cpu")
    ids = calibration_windows(tok, str(text), 4, 32, 0)
    with torch.no_grad():
        hs = model(ids, output_hidden_states=True).hidden_states
    first = steps[0]["scores"]
    for l in range(model.config.num_hidden_layers - 2):  # hs[L] is after the final norm: not a layer output
        cos = torch.nn.functional.cosine_similarity(hs[l][:, -1], hs[l + 2][:, -1], dim=-1).clamp(0, 1)
        assert first["pair_angular"][l] == pytest.approx((torch.arccos(cos) / math.pi).sum().item(), abs=1e-4)
        cos_bi = torch.nn.functional.cosine_similarity(hs[l], hs[l + 1], dim=-1).clamp(0, 1)
        assert first["bi"][l] == pytest.approx((1 - cos_bi).sum().item(), rel=1e-4)
