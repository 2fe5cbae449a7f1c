"""What pruning costs, as ratios measured side by side: each method's wall time against one dense calibration pass
on the same windows, its peak memory against the model's size, and the layer forwards it ran against the count
its algorithm needs (the floor).

Each method runs in its own process (a clean peak-memory reading), which first times one dense pass of the
calibration windows through every layer and then prunes to the deepest target; shallower targets are read off the
same run at the step that reached them (the methods are progressive). Results are kept in a JSON file and
finished methods are skipped on a rerun (resumable). Run it alone: two torch jobs on a 2-core CPU slow each
other by more than 2x, and a ratio measured beside another job is not a ratio of the method.

    HF_HUB_OFFLINE=1 python benchmarks/prune_cost.py --out runs/prune_cost.json
    HF_HUB_OFFLINE=1 python benchmarks/prune_cost.py --methods come,come-plus --depths 24,20 --device cuda
    HF_HUB_OFFLINE=1 python benchmarks/prune_cost.py --methods sleb,come-splice --out runs/splice_cost.json

Where sleb is among the methods, each other method's wall time to each depth is also printed as a ratio to
SLEB's from the same run (come-splice's budget: at most 1.5x). `--option METHOD:KEY=VALUE` passes a
method option (e.g. `come-splice:screen=0`, the full search).

Units: a "pass" is one forward of every layer of the dense model over every calibration window; layer
forwards are counted per window (a batch of 8 windows through one layer counts 8).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import sys
import time
from pathlib import Path

DEFAULT_METHODS = "shortgpt,come,come-plus,come-p,sleb"


def floor_forwards(method: str, steps: list[dict], depth0: int, n: int) -> int:
    """Layer forwards (per window) the method's algorithm cannot do without, reading its plan's steps.

    Every method: one calibration pass (depth0 layers). Progressive methods (come family, sleb, mka): after each
    structural step but the last, the suffix from the changed layer on is re-run once to refresh the cached
    states the next decision reads. SLEB, by
    its definition, also tries every remaining layer's removal each step (the suffix after it, from cached
    states). A weight-editing step (re-fit) needs no re-run of its own: it is part of its merge's re-run.
    """
    total = depth0 * n
    depth = depth0
    if method in ("shortgpt", "angular", "magnitude", "taylor", "reverse", "reverse-keep-last"):
        return total  # one-shot: the ranking needs one pass
    structural = [st for st in steps if st["op"] != "refit"]
    for k, step in enumerate(structural):
        span = step.get("span", 2) if step["op"] != "drop" else 1
        if method == "sleb":
            total += sum(depth - 1 - i for i in range(depth)) * n  # each candidate removal's suffix
        elif method == "come-splice":  # on the held-out windows (every 4th): every removal's suffix, one layer
            held = n // 4  # forward per screened candidate, and each trialled candidate's suffix from its pair on
            cands = step.get("scores", {}).get("candidates", [])
            total += sum(depth - 1 - i for i in range(depth)) * held + len(cands) * held
            total += sum(depth - 1 - c["layer"] for c in cands if "trial" in c) * held
        depth -= span - 1 if step["op"] != "drop" else 1
        if k < len(structural) - 1:  # the next decision reads the suffix from the new layer on: refresh it
            total += (depth - step["layer"]) * n
    return total


def worker(method: str, args: dict, queue) -> None:
    try:
        queue.put(measure(method, args))
    except BaseException as e:  # noqa: BLE001 - reported as the method's row
        queue.put({"method": method, "error": f"{type(e).__name__}: {e}"})


def measure(method: str, a: dict) -> dict:
    import torch

    from come import CalibConfig, PruneConfig, prune
    from come.data import calibration_windows
    from come.models import get_adapter, load_model
    from come.placement import model_bytes
    from come.prune import resolve_device

    torch.set_num_threads(a["threads"]) if a["threads"] else None
    device = resolve_device(a["device"])
    cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    depths = a["depths"]

    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # python + torch, before any model
    # -- one dense pass over the calibration windows (layers only, the LM head not included)
    model, tok, _ = load_model(a["model"], a["dtype"], device)
    adapter = get_adapter(model)
    ids = calibration_windows(tok, a["calib_data"], a["samples"], a["seq_len"], 0)
    size = model_bytes(model)
    depth0 = adapter.num_layers
    from come.capture import Calibration

    calib = Calibration(model, adapter, ids, a["batch_size"], device, None, progress=False)
    sync()
    dense = []
    for _ in range(a["dense_repeats"]):
        t0 = time.perf_counter()
        states = calib.hidden[0]
        for layer in adapter.layers:
            states, _ = calib.run_layer(layer, states)
        sync()
        dense.append(time.perf_counter() - t0)
    dense_s = min(dense)
    del calib, model, states
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()

    # -- count every decoder-layer and LM-head forward (per window), and time each plan step
    counts = {"layer": 0, "head": 0}
    layer_types: set[type] = set()

    def hook(module, inputs, _output):
        if not inputs or not torch.is_tensor(inputs[0]):
            return
        if type(module) in layer_types:
            counts["layer"] += inputs[0].shape[0]
        elif getattr(module, "_come_bench_head", False):
            counts["head"] += inputs[0].shape[0]

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    from come.methods import base as mbase

    timeline = []
    original_apply = mbase.PruneContext.apply
    t_start = [0.0]

    def apply(self, step, tensors=None, **kwargs):
        original_apply(self, step, tensors, **kwargs)
        sync()
        timeline.append({"t": time.perf_counter() - t_start[0], "depth": self.num_layers, "op": step["op"],
                         "layer_forwards": counts["layer"], "head_forwards": counts["head"]})

    mbase.PruneContext.apply = apply
    original_init = mbase.PruneContext.__post_init__

    def post_init(self):  # the model prune() loaded: mark its layer class and LM head, and note the time
        layer_types.add(type(self.adapter.layers[0]))
        head = self.adapter.lm_head()
        head._come_bench_head = True
        timeline.append({"t": time.perf_counter() - t_start[0], "depth": self.num_layers, "op": "calibrated",
                         "layer_forwards": counts["layer"], "head_forwards": counts["head"]})
        original_init(self)

    mbase.PruneContext.__post_init__ = post_init
    calib_cfg = CalibConfig(a["calib_data"], a["samples"], a["seq_len"], a["batch_size"], 0)
    cfg = PruneConfig(model=a["model"], target_layers=min(depths), method=method, calib=calib_cfg, device=a["device"],
                      dtype=a["dtype"], offload=a["offload"], progress=False,
                      method_options=a["options"].get(method, {}))
    t_start[0] = time.perf_counter()
    res = prune(cfg)
    sync()
    total_s = time.perf_counter() - t_start[0]
    handle.remove()
    if a["plans"]:  # the plan, to check decisions against another run
        folder = Path(a["plans"]) / method
        folder.mkdir(parents=True, exist_ok=True)
        res.plan.save(folder / "come_plan.json")
    # GPU: memory torch allocated; CPU: the process's resident high-water mark above what it held before the
    # model was loaded (the interpreter and torch themselves)
    peak = (torch.cuda.max_memory_allocated() if cuda
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base_rss)
    n = ids.shape[0]
    steps = res.plan.steps
    rows = {}
    for d in depths:
        # the last step at depth d (re-fits that follow the merge into d belong to it)
        idx = max((i for i, e in enumerate(timeline) if e["depth"] == d and e["op"] != "calibrated"), default=None)
        if idx is None:
            continue
        e = timeline[idx]
        k = idx  # timeline[0] is "calibrated": entries 1..idx are steps 0..idx-1
        floor = floor_forwards(method, steps[:k], depth0, n)
        rows[d] = {"wall_s": round(e["t"], 2), "passes": round(e["t"] / dense_s, 1),
                   "layer_forwards": e["layer_forwards"], "floor_forwards": floor,
                   "forwards_over_floor": round(e["layer_forwards"] / floor, 2),
                   "head_windows": e["head_forwards"], "head_passes": round(e["head_forwards"] / n, 1)}
    return {"method": method, "device": device, "dense_pass_s": round(dense_s, 3), "dense_passes_timed": dense,
            "windows": n, "depth0": depth0, "model_bytes": size, "peak_bytes": peak,
            "peak_over_model": round(peak / size, 2), "total_s": round(total_s, 2),
            "calibrated_s": round(timeline[0]["t"], 2), "depths": rows}


def table(results: dict, depths: list[int]) -> str:
    lines = ["| method | depth | wall s | passes (wall / dense pass) | layer forwards / floor | LM-head passes | "
             "peak memory / model |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error']} | | | | | |")
            continue
        for d in depths:
            row = r["depths"].get(str(d)) or r["depths"].get(d)
            if row:
                lines.append(f"| {name} | {d} | {row['wall_s']:.0f} | {row['passes']:.1f} | "
                             f"{row['forwards_over_floor']:.2f} | {row['head_passes']:.1f} | "
                             f"{r['peak_over_model']:.2f} |")
    sleb = results.get("sleb")
    if sleb and "error" not in sleb and len(results) > 1:
        lines += ["", "| method | depth | wall s | SLEB's wall s | wall time / SLEB's |", "|---|---:|---:|---:|---:|"]
        for name, r in results.items():
            if name == "sleb" or "error" in r:
                continue
            for d in depths:
                row, base = (x["depths"].get(str(d)) or x["depths"].get(d) for x in (r, sleb))
                if row and base:
                    lines.append(f"| {name} | {d} | {row['wall_s']:.1f} | {base['wall_s']:.1f} | "
                                 f"{row['wall_s'] / base['wall_s']:.2f} |")
    dense = {k: v["dense_pass_s"] for k, v in results.items() if "dense_pass_s" in v}
    if dense:
        lines.append("")
        lines.append("dense pass (s), timed in each method's process: "
                     + ", ".join(f"{k} {v:.2f}" for k, v in dense.items()))
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--methods", default=DEFAULT_METHODS)
    ap.add_argument("--depths", default="24,20")
    ap.add_argument("--calib-data", default="mix")
    ap.add_argument("--calib-samples", type=int, default=8)
    ap.add_argument("--calib-seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--offload", default="auto", choices=["auto", "always", "never"],
                    help="come prune's --offload (always: weights stay in CPU memory, streamed per layer)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads per process (0: torch's default)")
    ap.add_argument("--dense-repeats", type=int, default=3, help="dense passes timed; the fastest is the unit")
    ap.add_argument("--out", default="runs/prune_cost.json")
    ap.add_argument("--rerun", action="store_true", help="measure again the methods already in --out")
    ap.add_argument("--plans", default="", help="save each method's plan under this folder (METHOD/come_plan.json)")
    ap.add_argument("--option", action="append", default=[], metavar="METHOD:KEY=VALUE",
                    help="a method option, e.g. come-splice:screen=0 (repeatable)")
    args = ap.parse_args()
    options: dict = {}
    for item in args.option:
        method, _, kv = item.partition(":")
        key, sep, value = kv.partition("=")
        if not sep:
            ap.error(f"--option {item!r} must look like METHOD:KEY=VALUE")
        options.setdefault(method, {})[key] = value
    depths = sorted((int(d) for d in args.depths.split(",")), reverse=True)
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() and not args.rerun else {}
    a = {"model": args.model, "depths": depths, "calib_data": args.calib_data, "samples": args.calib_samples,
         "seq_len": args.calib_seq_len, "batch_size": args.batch_size, "device": args.device, "dtype": args.dtype,
         "offload": args.offload,
         "threads": args.threads, "dense_repeats": args.dense_repeats,
         "plans": args.plans, "options": options}
    ctx = mp.get_context("spawn")
    for method in args.methods.split(","):
        if method in results and "error" not in results[method]:
            continue
        q = ctx.Queue()
        p = ctx.Process(target=worker, args=(method, a, q))
        p.start()
        row = q.get()
        p.join()
        results[method] = row
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1))
        print(f"{method}: " + (row.get("error") or json.dumps(row["depths"])), flush=True)
    print(table(results, depths))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
