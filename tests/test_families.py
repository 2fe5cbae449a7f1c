"""Gemma 2/3, Phi-3/4, OLMo 2, Granite (and Qwen2 with sliding-window layers) on tiny random models: calibration
runs every layer as the model does, exact merge properties per family, every method, save/reload, generation, and
`come prune` / `come apply` end to end."""

import copy

import pytest
import torch
from conftest import SAMPLE_TEXT, TINY, prune_config, replays_bit_for_bit, same_weights, tiny_model, tiny_tokenizer
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    Gemma3TextConfig,
    GraniteConfig,
    LlamaConfig,
    Olmo2Config,
    Phi3Config,
    Qwen2Config,
)

from come import prune
from come.capture import Calibration
from come.cli import main
from come.errors import ComeError
from come.merge import concat_layers, replace_pair
from come.methods import METHODS
from come.models import check_supported, get_adapter, load_model

ALTERNATING = ["sliding_attention", "full_attention"] * 8
SLIDING = dict(sliding_window=8)  # shorter than the test windows, so a sliding layer's mask really differs
# soft-capping near the size of tiny random logits (real models: 50 / 30), so leaving it out would show
CONFIGS = {
    "gemma2": (Gemma2Config, dict(head_dim=16, query_pre_attn_scalar=16, attn_logit_softcapping=2.0,
                                  final_logit_softcapping=0.5, **SLIDING)),
    "gemma3_text": (Gemma3TextConfig, dict(head_dim=16, final_logit_softcapping=0.5, **SLIDING)),
    "phi3": (Phi3Config, {}),
    "olmo2": (Olmo2Config, {}),
    "granite": (GraniteConfig, dict(embedding_multiplier=12.0, residual_multiplier=0.22, attention_multiplier=1 / 16,
                                    logits_scaling=8.0)),
    "qwen2-sliding": (Qwen2Config, dict(use_sliding_window=True, **SLIDING)),
}
FAMILIES = list(CONFIGS)
NEW_FAMILIES = FAMILIES[:-1]  # the Qwen2 adapter is the existing one; it now also runs sliding-window layers
MIXED = ["gemma2", "gemma3_text", "qwen2-sliding"]  # sliding-window and global layers alternate
POST_NORM = ["gemma2", "gemma3_text", "olmo2"]  # norms after the sub-layers


def tiny_family(family: str, seed: int = 0, **overrides):
    """A random model of the family with non-trivial norm weights (around each family's identity) and biases."""
    cls, extra = CONFIGS[family]
    kw = dict(TINY, pad_token_id=0, bos_token_id=0, eos_token_id=None, **extra)
    kw.update(overrides)
    if "sliding_window" in extra:
        kw["layer_types"] = ALTERNATING[: kw["num_hidden_layers"]]
    torch.manual_seed(seed)
    impl = "eager" if family == "gemma2" else "sdpa"  # Gemma 2 soft-caps attention scores: eager only
    model = AutoModelForCausalLM.from_config(cls(**kw), dtype=torch.float32, attn_implementation=impl)
    identity = 1.0 - get_adapter(model).norm_offset  # Gemma's norms scale by 1 + w
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(identity + 0.3 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
    return model.eval()


def calibration(model, n=2, t=16, seed=1):
    torch.manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (n, t))
    a = get_adapter(model)
    return a, Calibration(model, a, ids, batch_size=n, progress=False)


def run(layer, h, kw):
    out = layer(h, **kw)
    return out[0] if isinstance(out, tuple) else out


def attn_out(a, layer, h, kw):
    """The attention's o_proj output on the residual h (its input norm applied, its post-norm not)."""
    norm = a.attn_norm(layer)
    x = h if norm is None else norm(h)
    return layer.self_attn(hidden_states=x, **{k: v for k, v in kw.items() if k != "use_cache"})[0]


def mlp_out(a, layer, u):
    norm = a.mlp_norm(layer)
    return layer.mlp(u if norm is None else norm(u))


def pair_of_one_type(a):
    """Two layers of the same attention type (a sliding-window piece would see more context in a global layer)."""
    types = [a.layer_type(x) for x in a.layers]
    i = 1
    j = next(k for k in range(i + 1, len(types)) if types[k] == types[i])
    return a.layers[i], a.layers[j]


def share_qk_norms(a, la, lb):
    """Per-head q/k norms are averaged, not folded: make them equal so a sum identity is exact."""
    if a.has_qk_norm and a.qk_norm_per_head:
        with torch.no_grad():
            for i in range(2):
                a.qk_norms(lb)[i].weight.copy_(a.qk_norms(la)[i].weight)


def generates_as_full_forward(model) -> bool:
    """Greedy generation with the KV cache picks the argmax of a full no-cache forward at every step (past the
    sliding window, so a sliding layer's cache is exercised too)."""
    ids = torch.randint(1, model.config.vocab_size, (1, 12), generator=torch.Generator().manual_seed(0))
    model.generation_config.eos_token_id = None  # six new tokens whatever they are
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=6, do_sample=False, use_cache=True)
        logits = model(out[:, :-1], use_cache=False).logits
    return out.shape == (1, 18) and torch.equal(logits[0, 11:].argmax(-1), out[0, 12:])


# --- the architecture check ---

def test_refusal_lists_the_supported_families():
    gpt2 = type("Config", (), {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]})()
    with pytest.raises(ComeError) as e:
        check_supported(gpt2)
    msg = str(e.value)
    assert "unsupported architecture 'GPT2LMHeadModel'" in msg and "\n" not in msg
    for name in ("Gemma 2 (gemma2)", "Gemma 3 (gemma3_text)", "Phi-3 / Phi-4 (phi3)", "OLMo 2 (olmo2)",
                 "Granite (granite)", "Llama (llama)", "Mistral (mistral)", "Qwen2 (qwen2)", "Qwen3 (qwen3)"):
        assert name in msg


# --- calibration: each layer with its own mask / RoPE ---

@pytest.mark.parametrize("family", FAMILIES)
def test_calibration_runs_every_layer_as_the_model_does(family):
    """Layer by layer, with the kwargs of each layer's own attention type, the calibration reproduces the model's
    forward exactly, and its NLL (final norm, head, soft-capping / logit scaling) is the model's loss."""
    model = tiny_family(family)
    a, calib = calibration(model, n=3, t=24)
    calib.run(0)
    ids = calib.input_ids
    with torch.no_grad():
        out = model(ids, labels=ids, output_hidden_states=True, use_cache=False)
    for i in range(a.num_layers):
        assert torch.equal(calib.hidden[i][0], out.hidden_states[i]), i
    assert calib.final_nll() == pytest.approx(out.loss.item(), rel=1e-5)
    assert len(calib.type_kwargs) == (2 if family in MIXED else 1)


# --- exact merge properties ---

@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("norm", ["mean", "fold"])
def test_ratio_one_zero_reproduces_layer_a(family, norm):
    model = tiny_family(family)
    a, calib = calibration(model)
    geo, d_ff = a.geometry(), model.config.intermediate_size
    la, lb = a.layers[0], a.layers[1]  # sliding then global where the family alternates
    merged = concat_layers(a, la, lb, (list(range(geo.num_kv_heads)), []), (list(range(d_ff)), []), (1.0, 0.0), norm)
    assert same_weights(merged, la) and a.layer_type(merged) == a.layer_type(la)
    h = calib.hidden[0][0]
    assert torch.equal(run(merged, h, calib.kwargs_for(merged)[0]), run(la, h, calib.kwargs_for(la)[0]))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("norm", ["mean", "fold"])
def test_attention_of_b_and_mlp_of_a_is_exact(family, norm):
    """All KV groups of layer b and all MLP channels of layer a: the merged layer is b's attention sub-layer
    followed by a's MLP sub-layer, each with its own norms (pre and post), multiplier and attention type."""
    model = tiny_family(family)
    a, calib = calibration(model)
    geo, d_ff = a.geometry(), model.config.intermediate_size
    la, lb = a.layers[0], a.layers[1]  # per-head q/k norms: b's own, as only b's heads are kept
    merged = concat_layers(a, la, lb, ([], list(range(geo.num_kv_heads))), (list(range(d_ff)), []), (0.5, 0.5), norm)
    assert a.layer_type(merged) == a.layer_type(lb)
    h, kw = calib.hidden[0][0], calib.kwargs_for(lb)[0]
    with torch.no_grad():
        u = h + a.residual_update(lb, "attn", attn_out(a, lb, h, kw))
        expected = u + a.residual_update(la, "mlp", mlp_out(a, la, u))
        got = run(merged, h, calib.kwargs_for(merged)[0])
    if norm == "mean":  # the very weights of each layer: bit for bit
        assert torch.equal(got, expected)
    else:  # a norm scale moved into the projections rounds differently
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("norm", ["mean", "fold"])
def test_one_kv_head_merge_keeps_the_attention_of_its_layer(norm):
    """Gemma 3 with one KV head (as Gemma 3 270M): a merge at any interior ratio keeps one layer's whole attention,
    so the merged attention must be that layer's own, its per-head q/k norms included; averaging them with the
    other layer's (whose heads are gone) changed every attention score of Gemma 3 270M's merges."""
    model = tiny_family("gemma3_text", num_key_value_heads=1, num_attention_heads=2)
    a, calib = calibration(model)
    d_ff = model.config.intermediate_size
    la, lb = pair_of_one_type(a)
    assert a.geometry().num_kv_heads == 1
    assert not torch.equal(a.qk_norms(la)[0].weight, a.qk_norms(lb)[0].weight)
    channels = (list(range(0, d_ff, 3)), [c for c in range(d_ff) if c % 3])
    for groups, ratio, own in ((([0], []), (0.6, 0.4), la), (([], [0]), (0.3, 0.7), lb)):
        merged = concat_layers(a, la, lb, groups, channels, ratio, norm)
        for i in range(2):
            assert torch.equal(a.qk_norms(merged)[i].weight, a.qk_norms(own)[i].weight)
        h, kw = calib.hidden[0][0], calib.kwargs_for(own)[0]
        with torch.no_grad():
            got, want = attn_out(a, merged, h, kw), attn_out(a, own, h, kw)
        if norm == "mean":  # the input norm too is the kept layer's own: bit for bit
            assert torch.equal(got, want)
        else:  # its scale folded into q/k/v rounds differently
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", ["phi3", "granite", "qwen2-sliding"])
def test_double_width_merge_is_the_parallel_sum(family):
    """Holding ALL pieces of both layers, a folded merge runs them side by side on the same input:
    u = h + m Attn_a(h) + m Attn_b(h), out = u + m MLP_a(u) + m MLP_b(u) (m: Granite's residual multiplier).
    Not for post-norm families (Gemma, OLMo 2): one post-norm normalises the sum, PN(y_a + y_b) differs from
    PN_a(y_a) + PN_b(y_b); see test_double_width_sums_before_the_post_norms."""
    model = tiny_family(family)
    a, calib = calibration(model)
    geo, d_ff = a.geometry(), model.config.intermediate_size
    la, lb = pair_of_one_type(a)
    all_g, all_c = list(range(geo.num_kv_heads)), list(range(d_ff))
    merged = concat_layers(a, la, lb, (all_g, all_g), (all_c, all_c), (0.5, 0.5), "fold")
    if family == "phi3":  # the fused rows are split at offsets taken from the config: double them for this layer
        attn = merged.self_attn
        attn.config = copy.copy(model.config)
        attn.config.num_attention_heads *= 2
        attn.config.num_key_value_heads *= 2
        attn.num_key_value_heads *= 2
    assert merged.self_attn.o_proj.in_features == 2 * la.self_attn.o_proj.in_features
    h, kw = calib.hidden[0][0], calib.kwargs_for(la)[0]
    with torch.no_grad():
        u = h + sum(a.residual_update(x, "attn", attn_out(a, x, h, kw)) for x in (la, lb))
        expected = u + sum(a.residual_update(x, "mlp", mlp_out(a, x, u)) for x in (la, lb))
        got = run(merged, h, kw)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", POST_NORM)
def test_double_width_sums_before_the_post_norms(family):
    """With post-norms the exact identity is one step earlier: the merged layer's o_proj (down_proj) output is
    the sum of the two layers' o_proj (down_proj) outputs. OLMo 2's attention is left out: its q/k norms
    normalise the whole projection, so the RMS of a double-width q mixes both layers' heads."""
    model = tiny_family(family)
    a, calib = calibration(model)
    geo, d_ff = a.geometry(), model.config.intermediate_size
    la, lb = pair_of_one_type(a)
    share_qk_norms(a, la, lb)
    all_g, all_c = list(range(geo.num_kv_heads)), list(range(d_ff))
    merged = concat_layers(a, la, lb, (all_g, all_g), (all_c, all_c), (0.5, 0.5), "fold")
    seen = {}
    hooks = [a.o_proj(merged).register_forward_hook(lambda _m, _i, y: seen.__setitem__("attn", y)),
             a.down_proj(merged).register_forward_hook(lambda _m, _i, y: seen.__setitem__("mlp", y))]
    h, kw = calib.hidden[0][0], calib.kwargs_for(la)[0]
    with torch.no_grad():
        run(merged, h, kw)
        u = h + a.residual_update(merged, "attn", seen["attn"])  # the merged layer's own post-attention residual
        if a.qk_norm_per_head or not a.has_qk_norm:
            torch.testing.assert_close(seen["attn"], attn_out(a, la, h, kw) + attn_out(a, lb, h, kw),
                                       rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(seen["mlp"], mlp_out(a, la, u) + mlp_out(a, lb, u), rtol=1e-4, atol=1e-5)
    for hk in hooks:
        hk.remove()


@pytest.mark.parametrize("family", FAMILIES)
def test_query_heads_stay_with_their_kv_head(family):
    """KV group 1 of layer a and groups 0, 2 of layer b: q/k/v rows (and OLMo 2's per-row q/k norm weights) and
    o_proj columns follow their group; the merged attention is each original restricted to its groups' heads
    (not for OLMo 2, whose whole-projection q/k norms couple the heads)."""
    model = tiny_family(family, num_attention_heads=6, num_key_value_heads=3)
    a, calib = calibration(model)
    geo, d_ff = a.geometry(), model.config.intermediate_size
    la, lb = pair_of_one_type(a)
    share_qk_norms(a, la, lb)
    groups = ([1], [0, 2])
    q_width = geo.n_rep * geo.head_dim

    def rows(gs, size):
        return torch.tensor([g * size + j for g in gs for j in range(size)])

    sizes = {"q": q_width, "k": geo.head_dim, "v": geo.head_dim}
    merged = concat_layers(a, la, lb, groups, (list(range(d_ff)), []), (0.5, 0.5), "mean")
    for name, size in sizes.items():
        want = torch.cat([a.attn_in(x)[name][0][rows(g, size)] for x, g in zip((la, lb), groups)])
        assert torch.equal(a.attn_in(merged)[name][0], want), name
    want = torch.cat([a.o_proj(x).weight[:, rows(g, q_width)] for x, g in zip((la, lb), groups)], 1)
    assert torch.equal(a.o_proj(merged).weight, want)
    if a.has_qk_norm and not a.qk_norm_per_head:
        for i, size in enumerate((q_width, geo.head_dim)):
            want = torch.cat([a.qk_norms(x)[i].weight[rows(g, size)] for x, g in zip((la, lb), groups)])
            assert torch.equal(a.qk_norms(merged)[i].weight, want)
        return

    folded = concat_layers(a, la, lb, groups, (list(range(d_ff)), []), (0.5, 0.5), "fold")
    h, kw = calib.hidden[0][0], calib.kwargs_for(la)[0]

    def restricted(layer, gs):
        lay = copy.deepcopy(layer)
        with torch.no_grad():
            o = a.o_proj(lay)
            keep = torch.zeros(o.weight.shape[1], dtype=torch.bool)
            keep[rows(gs, q_width)] = True
            o.weight[:, ~keep] = 0
            if o.bias is not None:
                o.bias.zero_()
        return attn_out(a, lay, h, kw)

    with torch.no_grad():
        if a.o_proj(folded).bias is not None:
            a.o_proj(folded).bias.zero_()
        torch.testing.assert_close(attn_out(a, folded, h, kw), restricted(la, groups[0]) + restricted(lb, groups[1]),
                                   rtol=1e-4, atol=1e-5)


def test_phi3_fused_selection_equals_selection_on_unfused_matrices():
    """A Llama twin of a Phi-3 model (the same weights in separate q/k/v and gate/up matrices) merged with the
    same pieces: the fused merged matrices are the unfused ones stacked, and the merged layers agree."""
    phi = tiny_family("phi3", num_attention_heads=6, num_key_value_heads=3)
    c = phi.config
    twin = AutoModelForCausalLM.from_config(LlamaConfig(**dict(TINY, num_attention_heads=6, num_key_value_heads=3),
                                                        rms_norm_eps=c.rms_norm_eps, hidden_act=c.hidden_act,
                                                        pad_token_id=0),
                                            dtype=torch.float32, attn_implementation="sdpa").eval()
    pa, ta = get_adapter(phi), get_adapter(twin)
    with torch.no_grad():
        for lp, lt in zip(pa.layers, ta.layers):
            for name, (wt, _) in {**pa.attn_in(lp), **pa.mlp_in(lp)}.items():
                getattr(lt.self_attn if name in "qkv" else lt.mlp, f"{name}_proj").weight.copy_(wt)
            for mod in ("self_attn.o_proj", "mlp.down_proj", "input_layernorm", "post_attention_layernorm"):
                lt.get_submodule(mod).weight.copy_(lp.get_submodule(mod).weight)
    d_ff = c.intermediate_size
    pieces = (([2], [0, 1]), (list(range(0, d_ff, 3)), list(range(1, d_ff, 3))), (0.4, 0.6))
    _, calib = calibration(phi)
    h, kw = calib.hidden[0][0], calib.layer_kwargs[0]
    for norm in ("mean", "fold"):
        mp = concat_layers(pa, pa.layers[1], pa.layers[2], *pieces, norm)
        mt = concat_layers(ta, ta.layers[1], ta.layers[2], *pieces, norm)
        qkv = torch.cat([mt.self_attn.q_proj.weight, mt.self_attn.k_proj.weight, mt.self_attn.v_proj.weight])
        assert torch.equal(mp.self_attn.qkv_proj.weight, qkv)
        assert torch.equal(mp.mlp.gate_up_proj.weight, torch.cat([mt.mlp.gate_proj.weight, mt.mlp.up_proj.weight]))
        assert torch.equal(mp.self_attn.o_proj.weight, mt.self_attn.o_proj.weight)
        assert torch.equal(mp.mlp.down_proj.weight, mt.mlp.down_proj.weight)
        with torch.no_grad():
            torch.testing.assert_close(run(mp, h, kw), run(mt, h, kw), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", MIXED)
def test_merged_layer_type_follows_its_heads(family):
    """Sliding layer 0 + global layer 1: heads of both make a global layer; heads of one layer keep its type.
    The config follows, and the model generates past the window with a cache as without."""
    model = tiny_family(family)
    a, calib = calibration(model)
    d_ff = model.config.intermediate_size
    la, lb = a.layers[0], a.layers[1]
    assert (a.layer_type(la), a.layer_type(lb)) == ("sliding_attention", "full_attention")
    half = (list(range(0, d_ff, 2)), list(range(1, d_ff, 2)))
    cases = [(([0], [1]), "full_attention"), (([0, 1], []), "sliding_attention"), (([], [0, 1]), "full_attention")]
    for groups, want in cases:
        merged = concat_layers(a, la, lb, groups, half, (0.5, 0.5), "mean")
        assert a.layer_type(merged) == want
        assert (merged.self_attn.sliding_window is None) == (want == "full_attention")
    replace_pair(a, 0, concat_layers(a, la, lb, ([0], [1]), half, (0.5, 0.5), "mean"))
    assert model.config.layer_types == ["full_attention", *ALTERNATING[2:6]] and model.config.num_hidden_layers == 5
    assert calib.kwargs_for(a.layers[0]) is calib.kwargs_for(lb)  # it runs with the global mask (and RoPE)
    assert generates_as_full_forward(model)


# --- methods, save/reload, CLI ---

@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    """Saved 8-layer tiny models of every new family (8: the `+` variants keep the first 4 and last 2)."""
    root = tmp_path_factory.mktemp("families")
    text = root / "calib.txt"
    text.write_text(SAMPLE_TEXT * 40)
    dirs = {}
    for family in FAMILIES:
        dirs[family] = root / family
        tiny_family(family, num_hidden_layers=8).save_pretrained(dirs[family])
        tiny_tokenizer().save_pretrained(dirs[family])
    return dirs, text


@pytest.fixture(scope="module")
def originals(family_dirs):
    """Each family's saved model as `load_model` gives it (copied per test: loading it each time costs more)."""
    return {family: load_model(str(path), "float32", "cpu")[0] for family, path in family_dirs[0].items()}


@pytest.mark.parametrize("method", sorted(set(METHODS) - {"come", "come-plus"}))  # those two: through the CLI below
@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_every_method_reaches_two_layers_less_and_replays(family_dirs, originals, family, method):
    dirs, text = family_dirs
    # random layers: LaCo's merged states sit far from the original; come-p on a coarse grid, for time
    opts = {"laco": {"T": 0.0}, "come-p": {"grid": 4}}.get(method, {})
    res = prune(prune_config(dirs[family], text, method=method, target_layers=6, method_options=opts))
    assert res.model.config.num_hidden_layers == 6 == len(res.model.model.layers)
    fresh = copy.deepcopy(originals[family])
    assert replays_bit_for_bit(res, fresh)  # the plan as data, with the tensors it computed
    assert getattr(fresh.config, "layer_types", None) == getattr(res.model.config, "layer_types", None)


@pytest.mark.parametrize("family", FAMILIES)
def test_save_from_pretrained_identical_logits_and_cached_generation(family_dirs, family, tmp_path):
    dirs, text = family_dirs
    res = prune(prune_config(dirs[family], text, method="come", target_layers=5, method_options={"remerge": True}))
    out = res.save(tmp_path / "out")
    back = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert back.config.num_hidden_layers == 5
    assert getattr(back.config, "layer_types", None) == getattr(res.model.config, "layer_types", None)
    ids = torch.randint(0, 512, (2, 20))
    with torch.no_grad():
        assert torch.equal(back(ids).logits, res.model(ids).logits)
    assert generates_as_full_forward(back)


@pytest.mark.parametrize("method", ["come", "come-plus"])
@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_come_prune_then_apply_replays_and_generates(family_dirs, family, method, tmp_path, capsys):
    dirs, text = family_dirs
    pruned, replayed = tmp_path / "pruned", tmp_path / "replayed"
    assert main(["prune", str(dirs[family]), "--method", method, "--target-layers", "6", "--calib-data", str(text),
                 "--calib-samples", "4", "--calib-seq-len", "32", "--device", "cpu", "--out", str(pruned)]) == 0
    assert main(["apply", str(pruned), "--model", str(dirs[family]), "--device", "cpu", "--out", str(replayed)]) == 0
    capsys.readouterr()
    first = AutoModelForCausalLM.from_pretrained(pruned, dtype=torch.float32).eval()
    second = AutoModelForCausalLM.from_pretrained(replayed, dtype=torch.float32).eval()
    assert first.config.num_hidden_layers == 6 and same_weights(first, second)
    assert generates_as_full_forward(first)


@pytest.mark.parametrize("method", ["sleb", "come"])  # drops, merges
@pytest.mark.parametrize("family", ["mistral", "qwen2", "qwen3", "qwen2-sliding"])  # Llama: test_prune, test_methods
def test_existing_families_drop_merge_replay_generate(family, method, tmp_path):
    path = tmp_path / family
    (tiny_family(family) if family in CONFIGS else tiny_model(family)).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    text = tmp_path / "calib.txt"
    text.write_text(SAMPLE_TEXT * 40)
    res = prune(prune_config(path, text, method=method, target_layers=4))
    assert res.model.config.num_hidden_layers == 4
    assert {st["op"] for st in res.plan.steps} == {"drop" if method == "sleb" else "merge"}
    fresh, _, _ = load_model(str(path), "float32", "cpu")
    assert replays_bit_for_bit(res, fresh, tensors=False)  # the JSON alone
    assert generates_as_full_forward(fresh)
