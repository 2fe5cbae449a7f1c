"""Exact properties of the concatenation merge on tiny random models of every supported family."""

import copy

import pytest
import torch
from conftest import FAMILIES, tiny_model

from come.capture import Calibration
from come.merge import concat_layers
from come.models import get_adapter
from come.plan import apply_step


def layer_inputs(model, adapter, n=2, t=16, seed=1):
    torch.manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (n, t))
    calib = Calibration(model, adapter, ids, batch_size=n, progress=False)
    return calib, calib.hidden[0][0], calib.layer_kwargs[0]


def run(layer, h, kw):
    out = layer(h, **kw)
    return out[0] if isinstance(out, tuple) else out


def attn_update(adapter, layer, h, kw):
    """Attention sub-layer's residual update Attn(N1 h)."""
    x = adapter.attn_norm(layer)(h)
    return layer.self_attn(hidden_states=x, **{k: v for k, v in kw.items() if k != "use_cache"})[0]


def mlp_update(adapter, layer, u):
    return layer.mlp(adapter.mlp_norm(layer)(u))


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("norm", ["mean", "fold"])
def test_ratio_one_zero_reproduces_first_layer(family, norm):
    model = tiny_model(family)
    a = get_adapter(model)
    geo = a.geometry()
    d_ff = model.config.intermediate_size
    _, h, kw = layer_inputs(model, a)
    la, lb = a.layers[1], a.layers[2]
    merged = concat_layers(a, la, lb, (list(range(geo.num_kv_heads)), []), (list(range(d_ff)), []), (1.0, 0.0), norm)
    for (n1, p1), (n2, p2) in zip(la.named_parameters(), merged.named_parameters()):
        assert n1 == n2 and torch.equal(p1, p2), n1
    assert torch.equal(run(merged, h, kw), run(la, h, kw))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_fold_double_width_is_parallel_sum(family):
    """Holding ALL pieces of both layers, a folded merge runs them side by side on the same input:
    u = h + Attn_a(h) + Attn_b(h), then out = u + MLP_a(u) + MLP_b(u) (each with its own norm)."""
    model = tiny_model(family)
    a = get_adapter(model)
    geo = a.geometry()
    d_ff = model.config.intermediate_size
    _, h, kw = layer_inputs(model, a)
    la, lb = a.layers[1], a.layers[2]
    if a.has_qk_norm:  # q/k norms are averaged, not folded: make them equal so the identity is exact
        with torch.no_grad():
            for i in range(2):
                a.qk_norms(lb)[i].weight.copy_(a.qk_norms(la)[i].weight)
    all_g, all_c = list(range(geo.num_kv_heads)), list(range(d_ff))
    merged = concat_layers(a, la, lb, (all_g, all_g), (all_c, all_c), (0.5, 0.5), "fold")
    assert a.q_proj(merged).out_features == 2 * a.q_proj(la).out_features
    with torch.no_grad():
        u = h + attn_update(a, la, h, kw) + attn_update(a, lb, h, kw)
        expected = u + mlp_update(a, la, u) + mlp_update(a, lb, u)
        if a.o_proj(la).bias is not None or a.down_proj(la).bias is not None:
            pytest.skip("output biases are ratio-averaged, not summed")
        got = run(merged, h, kw)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_kept_query_heads_stay_with_their_kv_head(family):
    """Keep KV group 1 of layer a and group 0 of layer b. The public code tiles selected query heads over KV
    heads in a way that would pair group-1 queries with the wrong KV head; here the merged attention must equal
    each original attention restricted (through o_proj columns) to exactly those groups' heads."""
    model = tiny_model(family, num_attention_heads=6, num_key_value_heads=3)
    a = get_adapter(model)
    geo = a.geometry()
    _, h, kw = layer_inputs(model, a)
    la, lb = a.layers[1], a.layers[2]
    if a.has_qk_norm:
        with torch.no_grad():
            for i in range(2):
                a.qk_norms(lb)[i].weight.copy_(a.qk_norms(la)[i].weight)
    d_ff = model.config.intermediate_size
    merged = concat_layers(a, la, lb, ([1], [0]), (list(range(d_ff)), []), (0.5, 0.5), "fold")
    width = geo.n_rep * geo.head_dim

    def restricted(layer, group):
        lay = copy.deepcopy(layer)
        with torch.no_grad():
            w = a.o_proj(lay).weight
            mask = torch.zeros(w.shape[1], dtype=torch.bool)
            mask[group * width : (group + 1) * width] = True
            w[:, ~mask] = 0
            if a.o_proj(lay).bias is not None:
                a.o_proj(lay).bias.zero_()
        return attn_update(a, lay, h, kw)

    with torch.no_grad():
        expected = restricted(la, 1) + restricted(lb, 0)
        if a.o_proj(merged).bias is not None:
            a.o_proj(merged).bias.zero_()
        got = attn_update(a, merged, h, kw)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    # and the rows themselves: q rows of group 1 (heads 2,3 with n_rep 2) follow k rows of KV head 1
    q = a.q_proj(la).weight
    torch.testing.assert_close(
        a.q_proj(merged).weight[:width], (q * a.attn_norm(la).weight)[width : 2 * width].to(q.dtype)
    )


@pytest.mark.parametrize("family", list(FAMILIES))
def test_merge_step_updates_config_and_renumbers(family):
    model = tiny_model(family)
    a = get_adapter(model)
    geo = a.geometry()
    d_ff = model.config.intermediate_size
    step = {"op": "merge", "layer": 2, "ratio": [0.5, 0.5], "norm": "mean",
            "attn_groups": [[0], [1]], "mlp_channels": [list(range(0, d_ff, 2)), list(range(1, d_ff, 2))]}
    apply_step(a, step)
    assert model.config.num_hidden_layers == 5 == len(a.layers)
    assert [layer.self_attn.layer_idx for layer in a.layers] == list(range(5))
    types = getattr(model.config, "layer_types", None)
    assert types is None or len(types) == 5
    assert a.q_proj(a.layers[2]).out_features == geo.num_heads * geo.head_dim
    ids = torch.randint(0, 512, (1, 8))
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=5, do_sample=False, use_cache=True)
        # the cache path agrees with a full forward: greedy tokens are the argmax of the no-cache logits
        logits = model(out[:, :-1], use_cache=False).logits
    assert out.shape == (1, 13)
    assert torch.equal(logits[0, 7:].argmax(-1), out[0, 8:])


def test_on_device_gives_back_the_home_tensors_untouched():
    """A visit to a device that holds no data (meta) and back: the weights, buffers and a tied parameter are
    the very tensors they were before (streamed weights are never copied back)."""
    import torch
    from torch import nn

    from come.capture import _all_on_device, on_device

    torch.manual_seed(0)
    emb, head = nn.Embedding(8, 4), nn.Linear(4, 8, bias=False)
    head.weight = emb.weight  # tied, as in SmolLM2
    block = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    block.register_buffer("scale", torch.arange(4.0))
    before = {k: v.clone() for k, v in block.state_dict().items()}
    storage = [p.data_ptr() for p in block.parameters()]
    tied = emb.weight.detach().clone()
    with on_device(block, torch.device("meta")):
        assert all(t.device.type == "meta" for t in [*block.parameters(), *block.buffers()])
    assert [p.data_ptr() for p in block.parameters()] == storage  # the same memory, not a copy
    assert all(torch.equal(v, before[k]) for k, v in block.state_dict().items())
    with _all_on_device([head, emb], torch.device("meta")):
        assert emb.weight.device.type == "meta" and head.weight.device.type == "meta"
    assert head.weight is emb.weight and torch.equal(emb.weight, tied)
