"""`come distill --strategy fsdp` on tiny random models: FSDP2 over 2 gloo processes against one process, shards
of 1/world, sharded checkpoints read on 1 and 2 processes, the gathered HF folder; and the --dry-run estimate.

One torchrun launch (this file is its own driver, see `main`) runs every 2-process job; the tests read its outputs.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import SAMPLE_TEXT, Interrupted, stop_at, tiny_model, tiny_tokenizer
from transformers import AutoModelForCausalLM, LlamaConfig

from come import ComeError, PruneConfig, prune
from come.config import CalibConfig
from come.distillation import DistillConfig, distill
from come.distillation.memory import Shapes, estimate

STOP = 6  # interrupt after 6 steps of the run: layer-wise 4, then global 2 (just after its checkpoint)


def config(root: Path, out: str, **kw) -> DistillConfig:
    base = dict(student=str(root / "student"), teacher=str(root / "teacher"), data=str(root / "train.txt"),
                out=str(root / out), stage="both", seq_len=32, batch_size=2, grad_accum=2, steps=4, lr=1e-3,
                checkpoint_every=2, device="cpu", progress=False, strategy="fsdp")
    return DistillConfig(**dict(base, **kw))


def read_back(cfg: DistillConfig, to: Path | None = None):
    """The checkpoint of `cfg`'s interrupted run (global stage) read into a sharded student and AdamW as `--resume`
    reads it, then gathered: (model state, optimizer state) on rank 0."""
    from come.distillation import sharding
    from come.distillation.global_ import trainable_groups
    from come.distillation.processes import Processes
    from come.distillation.train import Run
    from come.models import get_adapter

    d = Processes(cfg.device, group=True)
    try:
        t = Run(cfg, d)
        t.load()
        params = [p for g in trainable_groups(get_adapter(t.student), t.corr, cfg.train) for p in g]
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.AdamW(params, lr=cfg.lr)
        t.checkpoints.load_optimizer(opt, t.student)
        state = sharding.gather(t.student), sharding.gather_optimizer(t.student, opt).get("state")
        if d.main and to is not None:
            torch.save(state, to)
        return state
    finally:
        d.close()


def main(jobs_file: str) -> None:
    """torchrun driver: run the jobs of `jobs_file` in one process group (so the launch is paid once)."""
    import torch.distributed as dist

    import come.distillation.train as train

    torch.set_num_threads(1)
    root = Path(jobs_file).parent
    dist.init_process_group("gloo")
    loads, real = [], train.load_model  # which models each process reads (one copy: rank 0 only)

    def counted(name, *a, **k):
        loads.append(Path(name).name)
        return real(name, *a, **k)

    train.load_model = counted
    for job in json.loads(Path(jobs_file).read_text()):
        kind, out, kw = job["kind"], job["out"], job.get("kw", {})
        if kind == "run":
            distill(config(root, out, **kw))
        elif kind == "cut":
            try:
                distill(config(root, out, **kw), on_step=stop_at(STOP))
            except Interrupted:
                pass
        elif kind == "resume":
            distill(config(root, out, resume=True, **kw))
        elif kind == "read":
            read_back(config(root, out, resume=True, **kw), root / f"{out}.read.pt")
    (root / f"loads-{dist.get_rank()}.json").write_text(json.dumps(loads))
    dist.destroy_process_group()


JOBS = [
    {"kind": "run", "out": "full"},  # uninterrupted, 2 processes
    {"kind": "cut", "out": "cut2"}, {"kind": "resume", "out": "cut2"},  # interrupted and resumed on 2
    {"kind": "cut", "out": "cut1"}, {"kind": "read", "out": "cut1"},  # interrupted on 2, to resume on 1
    {"kind": "run", "out": "lora", "kw": {"stage": "lora", "lora_lr": 1e-2, "checkpoint_every": 0}},
]


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    """(folder, torchrun result): the tiny Llama pruned 6 -> 4 layers and every 2-process job run on it."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("fsdp")
    tiny_model("llama").save_pretrained(root / "teacher")
    tiny_tokenizer().save_pretrained(root / "teacher")
    (root / "calib.txt").write_text(SAMPLE_TEXT * 40)
    calib = CalibConfig(data=str(root / "calib.txt"), samples=4, seq_len=32, batch_size=2)
    prune(PruneConfig(model=str(root / "teacher"), target_layers=4, calib=calib, progress=False,
                      device="cpu")).save(root / "student")
    (root / "train.txt").write_text(SAMPLE_TEXT * 2)
    (root / "jobs.json").write_text(json.dumps(JOBS))
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        __file__, str(root / "jobs.json")], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return root


def weights(folder):
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).state_dict()


def losses(folder):
    return [json.loads(line)["loss"] for line in (Path(folder) / "distill_log.jsonl").read_text().splitlines()]


def max_diff(a, b):
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.mark.parametrize("out,kw", [("full", {}), ("lora", {"stage": "lora", "lora_lr": 1e-2})])
def test_fsdp_matches_one_process(two, out, kw):
    """2 processes with FSDP vs one process without it: the same losses and the same saved model, within rounding."""
    one = distill(config(two, f"one-{out}", strategy="ddp", checkpoint_every=0, **kw))
    a, b = losses(one.out), losses(two / out)
    assert len(a) == len(b) == (8 if out == "full" else 4)
    assert all(abs(x - y) <= 1e-5 * abs(x) for x, y in zip(a, b, strict=True)), (a, b)
    w1, w2 = weights(one.out), weights(two / out)  # a stock HF folder: from_pretrained reads it
    changed = max_diff(w1, weights(two / "student"))
    assert changed > 1e-3 and max_diff(w1, w2) < 2e-4, (changed, max_diff(w1, w2))
    s = json.loads((two / out / "distill_summary.json").read_text())
    assert s["processes"] == 2 and s["strategy"] == "fsdp"
    assert (two / out / "README.md").exists() and not any("lora" in k for k in w2)


def test_one_copy_of_the_models_whatever_the_processes(two):
    """Only rank 0 reads the teacher and the student; rank 1 builds them on the meta device and receives its
    shards, so CPU memory holds one copy of each model, not one per process (and the runs above match one
    process)."""
    rank0 = json.loads((two / "loads-0.json").read_text())
    rank1 = json.loads((two / "loads-1.json").read_text())
    assert rank1 == [] and {"teacher", "student"} <= set(rank0) and len(rank0) >= 2 * len(JOBS) - 2


def test_each_process_holds_half(two):
    s = json.loads((two / "full" / "distill_summary.json").read_text())
    for stage in ("layerwise", "global"):
        total, per = s["stages"][stage]["trainable_params"], s["stages"][stage]["params_per_process"]
        assert len(per) == 2 and sum(per) == total and max(per) <= 0.55 * total, (stage, total, per)


def test_resume_on_two_processes_is_bit_for_bit(two):
    a, b = weights(two / "full"), weights(two / "cut2")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert losses(two / "full") == losses(two / "cut2")
    assert not (two / "cut2.partial").exists()


def test_resume_on_one_process(two):
    """The checkpoint 2 processes wrote reads on 1 exactly as on 2 (weights and AdamW state bit for bit), and the
    run finishes there: the same model as the uninterrupted 2-process run, within rounding."""
    shards = sorted((two / "cut1.partial" / "checkpoint" / "dcp").glob("*.distcp"))
    sizes = [f.stat().st_size for f in shards]  # each process wrote its own shard, about half
    assert len(sizes) == 2 and min(sizes) > 0.8 * max(sizes), sizes
    model2, optim2 = torch.load(two / "cut1.read.pt", weights_only=True)
    model1, optim1 = read_back(config(two, "cut1", resume=True))
    assert model1.keys() == model2.keys() and all(torch.equal(model1[k], model2[k]) for k in model1)
    assert optim1.keys() == optim2.keys() and len(optim1) > 0
    for k in optim1:
        assert all(torch.equal(optim1[k][s], optim2[k][s]) for s in ("exp_avg", "exp_avg_sq", "step")), k
    res = distill(config(two, "cut1", resume=True))
    assert res.summary["processes"] == 1
    a, b = losses(two / "full"), losses(res.out)
    assert a[:STOP] == b[:STOP] and all(abs(x - y) <= 1e-5 * abs(x) for x, y in zip(a, b, strict=True))
    assert max_diff(weights(two / "full"), weights(res.out)) < 1e-5


def test_fsdp_bad_inputs(two, tmp_path):
    with pytest.raises(ComeError, match="logit-lens"):
        config(two, "x", loss="mse=1,kl=0.5").validate()
    with pytest.raises(ComeError, match="strategy"):
        config(two, "x", strategy="zero3").validate()
    # the CLI says it in one line
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    args = ["--student", str(two / "student"), "--teacher", str(two / "teacher"), "--train-data",
            str(two / "train.txt"), "--train-seq-len", "32", "--steps", "1", "--device", "cpu", "--strategy", "fsdp",
            "--loss", "kl=1", "--out", str(tmp_path / "o")]
    r = subprocess.run([sys.executable, "-m", "come.cli", "distill", *args], env=env, capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "logit-lens" in r.stderr


# --- the --dry-run estimate ---

LLAMA2_7B = dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32,
                 vocab_size=32000, max_position_embeddings=4096, tie_word_embeddings=False)
TREE = [[i] for i in range(22)] + [[22, 23], [24, 25], [26, 27], [28, 29], [30, 31]]  # 32 -> 27 layers
LAYER = 4 * 4096 * 4096 + 3 * 4096 * 11008 + 2 * 4096  # Llama-2-7B decoder layer: 202,383,360
ROOT = 2 * 32000 * 4096 + 4096  # embeddings, LM head, final norm


def rows(world, device="cuda", dtype=torch.bfloat16, **kw):
    cfg = DistillConfig(student="s", out="o", steps=1, seq_len=2048, batch_size=8, **kw)
    out = estimate(LlamaConfig(num_hidden_layers=27, **LLAMA2_7B), TREE, cfg, world, dtype, device)
    return {(r.stage, r.strategy): r for r in out}


def test_shapes_of_llama2_7b():
    s = Shapes.of(LlamaConfig(num_hidden_layers=32, **LLAMA2_7B))
    assert s.layers == [LAYER] * 32 and s.root == ROOT
    assert s.root + sum(s.layers) == 6_738_415_616  # Llama-2-7B's published parameter count


def test_memory_estimate_ddp_vs_fsdp():
    student, teacher = ROOT + 27 * LAYER, ROOT + 32 * LAYER
    r = rows(8, train="all")
    ddp, fsdp = r[("global", "ddp")], r[("global", "fsdp")]
    assert ddp.weights == 2 * (student + teacher)  # a full bf16 teacher and student in every process
    assert ddp.optimizer == 2 * 2 * 27 * LAYER  # AdamW's two moments of every layer, bf16
    assert ddp.gradients == 2 * 2 * 27 * LAYER  # gradients + DDP's buckets
    assert fsdp.optimizer == -(-ddp.optimizer // 8)  # 1/8 of it
    assert fsdp.weights == -(-ddp.weights // 8) + 2 * (ROOT + 2 * LAYER)  # 1/8 + root and 2 layers gathered in bf16
    assert fsdp.gradients == -(-2 * 27 * LAYER // 8) + 4 * LAYER  # 1/8 + one layer reduced in fp32
    assert fsdp.activations == ddp.activations > 0  # the same share of the batch either way
    # the layer-wise stage: DDP processes split the 5 merged layers (1 at most each of 8, 3 of 2) but each sees the
    # whole batch; FSDP processes shard all 5 and see 1/world of the batch
    lw = r[("layerwise", "ddp")], r[("layerwise", "fsdp")]
    assert lw[0].optimizer == 2 * 2 * 1 * LAYER and lw[1].optimizer == -(-2 * 2 * 5 * LAYER // 8)
    assert rows(2)[("layerwise", "ddp")].optimizer == 2 * 2 * 3 * LAYER
    assert lw[0].activations > lw[1].activations
    # one process: FSDP is DDP plus what it gathers
    one = rows(1, train="all")
    assert one[("global", "fsdp")].optimizer == one[("global", "ddp")].optimizer
    # more processes, less for FSDP and the same for DDP
    assert rows(16, train="all")[("global", "fsdp")].total < fsdp.total
    assert rows(16, train="all")[("global", "ddp")].weights == ddp.weights


def test_memory_estimate_lora_and_cpu():
    r = rows(2, stage="lora", lora_rank=8)
    # rank 8 on q, k, v, o (4096 in + 4096 out each) and gate, up (4096 + 11008), down (11008 + 4096), fp32
    adapters = 27 * 8 * (4 * 8192 + 3 * 15104)
    assert r[("lora", "ddp")].optimizer == 2 * 4 * adapters
    assert r[("lora", "fsdp")].optimizer == 4 * adapters  # 2 moments x 4 bytes / 2 processes
    cpu = rows(2, device="cpu", dtype=torch.float32)[("global", "fsdp")]
    assert cpu.weights == -(-4 * (ROOT + 27 * LAYER + ROOT + 32 * LAYER) // 2) + 4 * (ROOT + 2 * LAYER)


def test_dry_run_cli(two, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    r = subprocess.run([sys.executable, "-m", "come.cli", "distill", "--student", str(two / "student"), "--dry-run",
                        "--world-size", "2", "--out", str(tmp_path / "o")], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stdout.splitlines() if line.startswith("| layerwise") or line.startswith("| global")]
    assert len(lines) == 4 and "2 process(es)" in r.stdout and not (tmp_path / "o").exists()


if __name__ == "__main__":
    main(sys.argv[1])
