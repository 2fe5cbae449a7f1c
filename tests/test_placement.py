"""Where pruning keeps weights and cached states (`--offload`, `--store-device`): the decision, and CPU runs."""

import pytest
import torch

from come import PruneConfig, prune
from come.config import CalibConfig
from come.errors import ComeError
from come.models import load_config
from come.placement import HEADROOM, cache_bytes, decide

GB = 2**30


def where(p):
    return p.weights, p.cache


def test_cpu_keeps_everything_on_the_cpu():
    p = decide("cpu", "auto", None, 100 * GB, 100 * GB, None)
    assert (p.weights, p.cache, p.offloaded) == ("cpu", "cpu", False)


def test_auto_moves_the_cache_first_then_the_weights():
    free = 80 * GB
    fits = decide("cuda", "auto", None, 14 * GB, 17 * GB, free)
    assert (fits.weights, fits.cache) == ("cuda", "cuda")
    cache_out = decide("cuda", "auto", None, 40 * GB, 40 * GB, free)  # 80 > 64 together, 40 alone fits
    assert (cache_out.weights, cache_out.cache) == ("cuda", "cpu")
    both_out = decide("cuda", "auto", None, 140 * GB, 87 * GB, free)  # a 70B model in bf16
    assert (both_out.weights, both_out.cache, both_out.offloaded) == ("cpu", "cpu", True)
    assert "140.0 GiB" in both_out.reason and "streamed to cuda" in both_out.reason
    edge = HEADROOM * free
    assert decide("cuda", "auto", None, int(edge), 0, free).weights == "cuda"
    assert decide("cuda", "auto", None, int(edge) + 1, 0, free).weights == "cpu"


def test_explicit_modes_and_store_device_win():
    assert where(decide("cuda:1", "always", None, GB, GB, 80 * GB)) == ("cpu", "cpu")
    assert where(decide("cuda", "never", None, 140 * GB, 87 * GB, 80 * GB)) == ("cuda", "cuda")
    assert decide("cuda", "auto", "cuda", 40 * GB, 40 * GB, 80 * GB).cache == "cuda"  # the user's call
    assert where(decide("cuda", "auto", "cpu", GB, GB, 80 * GB)) == ("cuda", "cpu")
    assert decide("cuda", "auto", None, GB, GB, None).weights == "cuda"  # free memory unknown: as before
    with pytest.raises(ComeError, match="--offload must be one of auto, always, never"):
        decide("cuda", "sometimes", None, GB, GB, None)


def test_cache_bytes_counts_every_layer_boundary(tiny_dir):
    import torch

    path, _ = tiny_dir
    config, _ = load_config(str(path))
    n = (config.num_hidden_layers + 1) * 4 * 32 * config.hidden_size
    assert cache_bytes(config, 4, 32, torch.float32) == 4 * n
    assert cache_bytes(config, 4, 32, torch.bfloat16) == 2 * n


def _cfg(path, text, **kw):
    calib = CalibConfig(data=str(text), samples=4, seq_len=32, batch_size=2)
    return PruneConfig(model=str(path), target_layers=4, calib=calib, progress=False, **kw)


def test_store_device_and_placement_are_recorded_and_change_nothing(tiny_dir):
    path, text = tiny_dir
    plain = prune(_cfg(path, text, method="come-plus", device="cpu"))
    stored = prune(_cfg(path, text, method="come-plus", device="cpu", offload="always", store_device="cpu"))
    assert plain.plan.steps == stored.plan.steps
    assert stored.plan.stats["placement"] == {"weights": "cpu", "cache": "cpu", "reason": "everything on the CPU"}


def test_taylor_refuses_streamed_weights_before_loading(tiny_dir, monkeypatch):
    import sys

    path, text = tiny_dir
    module = sys.modules["come.prune"]  # `come.prune` is also the API function
    monkeypatch.setattr(module, "check_device_dtype", lambda *a: None)  # as if cuda:0 were there
    monkeypatch.setattr(module, "load_model", lambda *a, **k: pytest.fail("loaded the model before refusing"))
    with pytest.raises(ComeError, match="taylor back-propagates through the whole model.*--offload never"):
        prune(_cfg(path, text, method="taylor", device="cuda:0", offload="always"))


def test_a_device_that_cannot_run_is_refused_first(tiny_dir):
    path, text = tiny_dir
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    with pytest.raises(ComeError, match="device 'cuda:0' cannot run"):
        prune(_cfg(path, text, device="cuda:0"))


def test_bad_offload_or_store_device_is_refused(tiny_dir):
    path, text = tiny_dir
    with pytest.raises(ComeError, match="--offload must be one of"):
        prune(_cfg(path, text, offload="maybe"))
    with pytest.raises(ComeError, match="--store-device 'gpu' is not a device"):
        prune(_cfg(path, text, store_device="gpu"))


def test_inference_spreads_only_what_does_not_fit_one_device(tiny_dir):
    from come.models import load_model
    from come.placement import model_bytes, place_for_inference, spread_needed

    assert not spread_needed(14 * GB, 80 * GB) and spread_needed(100 * GB, 80 * GB)
    assert not spread_needed(100 * GB, None)  # CPU: free memory unknown, never spread
    path, _ = tiny_dir
    model, _, _ = load_model(str(path), "float32", "cpu")
    unique = {id(p): p for p in model.parameters()}.values()
    assert model_bytes(model) >= 4 * sum(p.numel() for p in unique)
    assert place_for_inference(model, "cpu") == "cpu" and next(model.parameters()).device.type == "cpu"


def test_spread_dispatches_with_accelerate_and_keeps_the_logits(tiny_dir):
    import torch

    from come.models import load_model
    from come.placement import spread

    path, _ = tiny_dir
    model, _, _ = load_model(str(path), "float32", "cpu")
    ids = torch.randint(0, 512, (1, 8))
    with torch.no_grad():
        before = model(ids).logits
        device_map = spread(model, {"cpu": 2**34})  # the glue code; on a GPU machine the budget names GPUs too
        assert set(device_map.values()) == {"cpu"}
        assert torch.equal(model(ids).logits, before)


def test_out_of_device_memory_is_one_line_that_says_what_to_do(tiny_dir, monkeypatch):
    import torch

    from come.models import load_model, move_model

    path, _ = tiny_dir
    model, _, _ = load_model(str(path), "float32", "cpu")
    real_to = torch.nn.Module.to

    def to(self, *args, **kwargs):  # what a too-small GPU does, on a machine without one
        if args and str(args[0]).startswith("cuda"):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "to", to)
    message = r"^tiny \(0\.\d GiB of weights\) does not fit on cuda:0: .*--offload always"
    with pytest.raises(ComeError, match=message) as e:
        move_model(model, "cuda:0", "tiny")
    assert "\n" not in str(e.value) and next(model.parameters()).device.type == "cpu"


def test_a_model_already_on_the_device_is_not_judged_against_its_own_memory(tiny_dir, monkeypatch):
    import come.placement as placement
    from come.models import load_model

    path, _ = tiny_dir
    model, _, _ = load_model(str(path), "float32", "cpu")
    monkeypatch.setattr(placement, "free_memory", lambda device: 1)  # the device is full: of this very model
    monkeypatch.setattr(placement, "spread", lambda *a: pytest.fail("spread a model that is already in place"))
    assert placement.place_for_inference(model, "cpu") == "cpu"
