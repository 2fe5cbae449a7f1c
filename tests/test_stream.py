"""Pruning without the model or the cache in CPU memory: the disk-backed calibration cache (`--store-device disk`,
`--cache-dir`), weights streamed from the checkpoint one decoder layer at a time (`--stream`), and what the
dry run estimates with them."""

import gc
import json
import os

import pytest
import torch
from conftest import prune_config
from safetensors.torch import load_file

from come import prune
from come.errors import ComeError
from come.placement import DISK, decide

GB = 2**30


def test_offloaded_weights_stream_and_the_cache_goes_to_disk_when_cpu_memory_is_short():
    p = decide("cuda", "auto", None, 140 * GB, 81 * GB, 80 * GB, stream="auto", ram_bytes=128 * GB,
               cache_peak=162 * GB)
    assert (p.weights, p.cache, p.streamed) == (DISK, DISK, True)
    assert "read from the checkpoint" in p.reason and "memory-mapped" in p.reason
    roomy = decide("cuda", "auto", None, 140 * GB, 81 * GB, 80 * GB, stream="auto", ram_bytes=1024 * GB)
    assert (roomy.weights, roomy.cache) == (DISK, "cpu")  # the cache fits in CPU memory: it stays there
    kept = decide("cuda", "auto", None, 140 * GB, 81 * GB, 80 * GB, stream="never", ram_bytes=128 * GB)
    assert (kept.weights, kept.cache) == ("cpu", DISK)  # 140 GiB of weights in memory leave no room for it
    assert decide("cuda", "auto", "cpu", 140 * GB, 81 * GB, 80 * GB, stream="auto", ram_bytes=GB).cache == "cpu"
    assert decide("cuda", "auto", None, GB, GB, 80 * GB, stream="auto", ram_bytes=GB).weights == "cuda"
    cpu = decide("cpu", "auto", DISK, GB, GB, None, stream="always")
    assert (cpu.weights, cpu.cache) == (DISK, DISK)
    with pytest.raises(ComeError, match="--stream must be one of auto, always, never"):
        decide("cpu", "auto", None, GB, GB, None, stream="sometimes")


def test_disk_states_keep_the_bytes_and_their_files_go_with_them(tmp_path):
    from come.diskcache import DiskCache

    cache = DiskCache(tmp_path)
    batches = [torch.randn(2, 5, 7).to(torch.bfloat16), torch.randn(1, 5, 7).to(torch.bfloat16)]
    states = cache.store(batches)
    assert len(states) == 2 and all(torch.equal(a, b) for a, b in zip(batches, states))
    assert states[0].dtype == torch.bfloat16 and torch.equal(states[:1][0], batches[0])
    assert len(list(cache.root.glob("states-*"))) == 2
    del states
    gc.collect()
    assert not list(cache.root.glob("states-*"))  # a boundary nothing refers to any more
    cache.store(batches)
    cache.close()
    assert not cache.root.exists()


def _weights(folder):
    files = sorted(folder.glob("*.safetensors"))
    out = {}
    for f in files:
        if f.name != "come_plan.safetensors":
            out.update(load_file(str(f)))
    return out


def test_the_disk_cache_changes_nothing_and_leaves_no_file(tiny_dir, tmp_path):
    path, text = tiny_dir
    cache_dir = tmp_path / "scratch"
    plain = prune(prune_config(path, text, method="come-plus", target_layers=4))
    disk = prune(prune_config(path, text, method="come-plus", target_layers=4, store_device="disk",
                              cache_dir=str(cache_dir)))
    assert disk.plan.stats["placement"]["cache"] == DISK
    assert (disk.plan.steps, disk.plan.tree) == (plain.plan.steps, plain.plan.tree)
    assert plain.plan.tensors.keys() == disk.plan.tensors.keys()
    assert all(torch.equal(plain.plan.tensors[k], disk.plan.tensors[k]) for k in plain.plan.tensors)
    a, b = plain.model.state_dict(), disk.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert list(cache_dir.iterdir()) == []
    assert disk.plan.settings["cache_dir"] == "scratch"  # a name, never the path


def _replace_run(monkeypatch, name, run):
    import dataclasses
    import sys

    from come.methods import get_method

    record = dataclasses.replace(get_method(name), run=run)
    monkeypatch.setattr(sys.modules["come.prune"], "get_method", lambda n: record if n == name else get_method(n))


def test_the_disk_cache_is_removed_when_the_run_fails(tiny_dir, tmp_path, monkeypatch):
    path, text = tiny_dir
    cache_dir = tmp_path / "scratch"
    seen = []

    def fail(ctx):
        seen.extend(ctx.calib.disk.root.iterdir())
        raise RuntimeError("killed")

    _replace_run(monkeypatch, "shortgpt", fail)
    with pytest.raises(RuntimeError, match="killed"):
        prune(prune_config(path, text, method="shortgpt", target_layers=4, store_device="disk",
                           cache_dir=str(cache_dir)))
    assert any(p.name.startswith("states-") for p in seen)  # the cache was on disk while the method ran
    assert list(cache_dir.iterdir()) == []


def test_an_unusable_cache_dir_is_one_line_before_any_weights_load(tiny_dir, tmp_path, monkeypatch):
    import sys

    path, text = tiny_dir
    module = sys.modules["come.prune"]
    monkeypatch.setattr(module, "load_model", lambda *a, **k: pytest.fail("loaded the model before refusing"))
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(ComeError, match=r"--cache-dir .*a-file is a file: pass a folder"):
        prune(prune_config(path, text, target_layers=4, store_device="disk", cache_dir=str(blocker)))
    with pytest.raises(ComeError, match="--cache-dir .*cannot be created"):
        prune(prune_config(path, text, target_layers=4, store_device="disk", cache_dir=str(blocker / "sub")))
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(ComeError, match="--cache-dir .*cannot write"):
            prune(prune_config(path, text, target_layers=4, store_device="disk", cache_dir=str(locked)))


@pytest.mark.parametrize("method", ["come-plus", "sleb"])
def test_streaming_holds_at_most_three_layers_and_changes_nothing(tiny_dir, tmp_path, monkeypatch, method):
    """Every read of a streamed layer counts the decoder layers whose weights are in memory: from the modules
    themselves, and the reads any of whose weights is still alive anywhere (a reference held outside the model
    counts too). Never more than the streamer's limit (3: a pair and their merge). The plan and the saved weights
    are those of a run with the whole model in memory."""
    from come import stream

    path, text = tiny_dir
    counts, alive = [], []
    real, real_parameter = stream.read_tensors, stream._parameter
    models, loads = [], []

    def counting(sources, dtype):
        model = models[0]() if models else None
        if model is not None:
            streamer = model.come_streamer
            counts.append(sum(1 for layer in list(streamer.layers.keys())
                              if any(p.device.type != "meta" for _, p in stream._params(layer))))
            # refcounting frees a weight as soon as nothing refers to it (no cycles hold weights)
            alive.append(sum(1 for refs in loads if any(r() is not None for r in refs)))
            loads.append([])
        return real(sources, dtype)

    def tracked(t, requires_grad):
        import weakref

        p = real_parameter(t, requires_grad)
        if loads:
            loads[-1].append(weakref.ref(p))
        return p

    orig_load = stream.load_streamed

    def load(*a, **k):
        import weakref

        out = orig_load(*a, **k)
        models.append(weakref.ref(out[0]))
        return out

    monkeypatch.setattr(stream, "read_tensors", counting)
    monkeypatch.setattr(stream, "_parameter", tracked)
    monkeypatch.setattr(stream, "load_streamed", load)
    plain = prune(prune_config(path, text, method=method, target_layers=3))
    streamed = prune(prune_config(path, text, method=method, target_layers=3, stream="always",
                                  cache_dir=str(tmp_path / "scratch")))
    assert streamed.plan.stats["placement"]["weights"] == DISK
    assert (streamed.plan.steps, streamed.plan.tree) == (plain.plan.steps, plain.plan.tree)
    assert len(counts) > 6 and max(counts) <= stream.DEFAULT_LIMIT  # each layer read at least once, 3 at most
    assert max(alive) <= stream.DEFAULT_LIMIT and max(alive) >= 2
    assert streamed.model.come_streamer.max_held <= stream.DEFAULT_LIMIT
    plain.save(tmp_path / "plain")
    streamed.save(tmp_path / "streamed")
    a, b = _weights(tmp_path / "plain"), _weights(tmp_path / "streamed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert max(counts) <= stream.DEFAULT_LIMIT and max(alive) <= stream.DEFAULT_LIMIT  # saving: one at a time too


def test_the_streamed_result_is_written_in_shards_with_an_index_that_transformers_loads(tiny_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    path, text = tiny_dir
    result = prune(prune_config(path, text, method="shortgpt", target_layers=4, stream="always",
                                cache_dir=str(tmp_path / "scratch")))
    folder = tmp_path / "sharded"
    folder.mkdir()
    result.model.come_streamer.save(folder, torch.float32, shard_bytes=200_000)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and all((folder / s).exists() for s in shards)
    assert not list(folder.glob(".shard-*"))
    loaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    assert loaded.config.num_hidden_layers == 4
    ref = prune(prune_config(path, text, method="shortgpt", target_layers=4)).model.state_dict()
    got = loaded.state_dict()
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)


def test_the_scratch_files_of_a_streamed_run_are_removed_when_it_fails(tiny_dir, tmp_path, monkeypatch):
    from come.methods import get_method

    path, text = tiny_dir
    scratch = tmp_path / "scratch"
    real = get_method("come").run

    def fail_after_merging(ctx):
        ctx.target_layers = 5  # one merge, which the streamer writes out when it is released
        real(ctx)
        for layer in list(ctx.adapter.layers):
            ctx.model.come_streamer.hold(layer)
        assert any(scratch.rglob("layer-*.safetensors"))
        raise RuntimeError("killed")

    _replace_run(monkeypatch, "come", fail_after_merging)
    with pytest.raises(RuntimeError, match="killed"):
        prune(prune_config(path, text, method="come", target_layers=4, stream="always", cache_dir=str(scratch)))
    assert list(scratch.iterdir()) == []


def test_the_70b_dry_run_fits_in_64_gib_of_cpu_memory_with_streaming_and_the_disk_cache(monkeypatch):
    from come import placement
    from come.config import PruneConfig
    from come.dryrun import dry_run

    monkeypatch.setattr(placement, "available_ram", lambda: 128 * GB)  # a 128 GB workstation
    cfg = PruneConfig(model="tests/data/configs/llama-3-70b", target_layers=56)
    assert dry_run(cfg, gpu_memory="80GiB", cpu_memory="1TiB").place.cache == "cpu"  # 162 GiB fit in 1 TiB
    with pytest.raises(ComeError, match="--cpu-memory 'lots' is not a size"):
        dry_run(cfg, gpu_memory="80GiB", cpu_memory="lots")
    run = dry_run(cfg, gpu_memory="80GiB")
    assert (run.place.weights, run.place.cache) == (DISK, DISK)
    assert run.cpu_peak < 64 * GB
    assert "peak CPU RAM  ~" in run.text() and "162.0 GiB in --cache-dir" in run.text()
    before = dry_run(PruneConfig(model="tests/data/configs/llama-3-70b", target_layers=56, stream="never",
                                 store_device="cpu"), gpu_memory="80GiB")
    assert before.cpu_peak > 290 * GB  # the whole checkpoint read first, then the cache beside it


def test_a_streamed_layer_visits_a_device_and_comes_back_unchanged(tiny_dir, tmp_path):
    """The GPU path on the CPU: `on_device` moves a streamed layer (here to the meta device, as to a GPU) for its
    turn and gives it back its own weights, which the streamer then releases without writing a scratch file."""
    from come.capture import on_device
    from come.stream import load_streamed

    path, _ = tiny_dir
    model, _, _ = load_streamed(str(path), torch.float32, "cpu", str(tmp_path / "scratch"))
    streamer, layer = model.come_streamer, model.model.layers[0]
    assert all(p.device.type == "meta" for _, p in _named(layer))  # released until something reads it
    with on_device(layer, torch.device("meta")):
        assert layer.self_attn.q_proj.weight.device.type == "meta" and layer in streamer.held
    weight = layer.self_attn.q_proj.weight
    assert weight.device.type == "cpu" and bool(weight.abs().sum() > 0)
    before = weight.clone()
    streamer.release(layer)
    assert not (tmp_path / "scratch").exists() or not list((tmp_path / "scratch").rglob("*.safetensors"))
    assert torch.equal(layer.self_attn.q_proj.weight, before)  # read again from the checkpoint
    with torch.no_grad():
        layer.self_attn.q_proj.weight.mul_(2)  # an edit in place (a re-fit) is kept through a release
    streamer.release(layer)
    assert list((tmp_path / "scratch").rglob("layer-*.safetensors"))
    assert torch.equal(layer.self_attn.q_proj.weight, 2 * before)
    streamer.close()
    assert list((tmp_path / "scratch").iterdir()) == []


def _named(layer):
    from come.stream import _params

    return list(_params(layer))


def test_a_streamed_result_evaluated_afterwards_is_read_whole_first(tiny_dir, tmp_path):
    """`come compare` evaluates the model `prune` returned: placing a streamed one for inference makes it a plain
    model with every layer in memory (its logits those of the same prune in memory)."""
    from come.placement import place_for_inference

    path, text = tiny_dir
    plain = prune(prune_config(path, text, method="come", target_layers=4))
    streamed = prune(prune_config(path, text, method="come", target_layers=4, stream="always",
                                  cache_dir=str(tmp_path / "scratch")))
    place_for_inference(streamed.model, "cpu")
    assert not hasattr(streamed.model, "come_streamer")
    assert all(p.device.type == "cpu" for p in streamed.model.parameters())
    ids = torch.arange(1, 17).unsqueeze(0)
    with torch.no_grad():
        assert torch.equal(plain.model(ids).logits, streamed.model(ids).logits)


def test_come_prune_streams_to_a_sharded_output_and_resumes(tiny_dir, tmp_path, capsys, monkeypatch):
    """The command line: --stream always --store-device disk --cache-dir writes the output folder through the
    usual lock and temporary (nothing left beside it, nothing left in --cache-dir), and a run killed after its
    first step resumes streamed to the plan of an uninterrupted one; a bad --cache-dir is one line, exit 2."""
    from come import stream
    from come.cli import main
    from come.plan import Plan

    path, text = tiny_dir
    scratch = tmp_path / "scratch"
    flags = ["prune", str(path), "--calib-data", str(text), "--calib-samples", "4", "--calib-seq-len", "32",
             "--calib-batch-size", "2", "--device", "cpu", "--target-layers", "3", "--method", "come"]
    streamed = [*flags, "--stream", "always", "--store-device", "disk", "--cache-dir", str(scratch)]
    assert main([*flags, "--out", str(tmp_path / "plain")]) == 0
    monkeypatch.setattr(stream, "SHARD_BYTES", 300_000)  # several shards and an index
    assert main([*streamed, "--out", str(tmp_path / "streamed")]) == 0
    out = tmp_path / "streamed"
    assert (out / "model.safetensors.index.json").exists() and len(list(out.glob("model-*.safetensors"))) > 1
    assert sorted(p.name for p in tmp_path.iterdir() if "streamed" in p.name) == ["streamed"]
    assert Plan.load(out).steps == Plan.load(tmp_path / "plain").steps
    for name in ("config.json", "generation_config.json", "tokenizer.json"):
        assert (out / name).read_text() == (tmp_path / "plain" / name).read_text(), name
    a, b = _weights(tmp_path / "plain"), _weights(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not [p for p in scratch.iterdir() if p.name.startswith(".come-cache")]

    real = stream.Streamer.release
    calls = []

    def killed_after_the_first_step(self, layer):  # the first merge's layer is written out: stop there
        real(self, layer)
        if self._files:
            calls.append(1)
            raise KeyboardInterrupt

    monkeypatch.setattr(stream.Streamer, "release", killed_after_the_first_step)
    assert main([*streamed, "--out", str(tmp_path / "resumed")]) != 0  # come: interrupted
    monkeypatch.setattr(stream.Streamer, "release", real)
    assert calls and (tmp_path / ".resumed.resume").exists() and not (tmp_path / "resumed").exists()
    assert len(Plan.load(tmp_path / ".resumed.resume").steps) >= 1
    gc.collect()
    assert list(scratch.iterdir()) == []  # the killed run's cache and scratch layers are gone
    assert main([*streamed, "--out", str(tmp_path / "resumed"), "--resume"]) == 0
    assert Plan.load(tmp_path / "resumed").steps == Plan.load(tmp_path / "plain").steps
    capsys.readouterr()
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert main([*flags, "--store-device", "disk", "--cache-dir", str(blocker), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--cache-dir" in err[0] and "is a file" in err[0]


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "qwen3"])
def test_a_streamed_model_computes_what_the_loaded_one_does(tmp_path, family):
    from conftest import tiny_model, tiny_tokenizer

    from come.models import load_model
    from come.stream import load_streamed

    folder = tmp_path / family
    tiny_model(family).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    loaded, _, _ = load_model(str(folder), torch.float32, "cpu")
    streamed, _, _ = load_streamed(str(folder), torch.float32, "cpu", str(tmp_path / "scratch"))
    ids = torch.arange(3, 40).unsqueeze(0)
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, streamed(ids).logits)
    assert streamed.come_streamer.loads == loaded.config.num_hidden_layers
    assert streamed.come_streamer.held_layers() <= 3


def test_streaming_a_checkpoint_without_safetensors_is_one_line(tmp_path):
    from conftest import tiny_model, tiny_tokenizer

    from come.stream import load_streamed

    folder = tmp_path / "bin"
    model = tiny_model("llama")
    model.config.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")  # an old PyTorch checkpoint
    tiny_tokenizer().save_pretrained(folder)
    with pytest.raises(ComeError, match="no local safetensors weights to stream.*--stream never"):
        load_streamed(str(folder), torch.float32, "cpu")


def test_auto_streams_only_a_checkpoint_it_can_stream(tmp_path, monkeypatch):
    """With --stream auto, a model without local safetensors weights is kept in CPU memory as before streaming
    (here on a CPU run whose placement streams whatever --stream auto would stream, as offloaded weights do)."""
    from conftest import SAMPLE_TEXT, tiny_model, tiny_tokenizer

    from come import placement

    folder = tmp_path / "bin"
    model = tiny_model("llama")
    model.config.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    tiny_tokenizer().save_pretrained(folder)
    text = tmp_path / "calib.txt"
    text.write_text(SAMPLE_TEXT * 40)
    real = placement.decide
    monkeypatch.setattr(placement, "decide", lambda *a, stream="never", **k: real(
        *a, stream="never" if stream == "never" else "always", **k))
    result = prune(prune_config(folder, text, method="shortgpt", target_layers=4))
    assert result.plan.stats["placement"]["weights"] == "cpu" and not hasattr(result.model, "come_streamer")


def test_a_replaced_weight_is_written_out_when_its_layer_is_released(tiny_dir, tmp_path):
    """A step that installs a new projection in a streamed layer (rather than editing one in place) is kept too."""
    from come.models.base import new_linear
    from come.stream import load_streamed

    path, _ = tiny_dir
    model, _, _ = load_streamed(str(path), torch.float32, "cpu", str(tmp_path / "scratch"))
    streamer, layer = model.come_streamer, model.model.layers[1]
    old = layer.self_attn.o_proj
    replaced = new_linear(old.weight.detach() * 3, None, old)
    layer.self_attn.o_proj = replaced
    del old, replaced
    gc.collect()
    expected = layer.self_attn.o_proj.weight.detach().clone()
    streamer.release(layer)
    assert layer.self_attn.o_proj.weight.device.type == "cpu"  # read back, from the scratch file
    assert torch.equal(layer.self_attn.o_proj.weight, expected)
