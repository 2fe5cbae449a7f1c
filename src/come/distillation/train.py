"""`distill`: layer-wise and hierarchical distillation of a pruned student from its teacher, and the LoRA baseline.

A run loads teacher and student, then trains the stages `--stage` names (`stages.py`: what each trains, with
which loss and learning rate) with one loop (`loop.py`), checkpointing into `OUT.partial` (`checkpoint.py`, on
`come.runstore`) so that `resume` continues bit for bit; the finished student is saved like a `come prune`
output (`--save-dtype`, model card) with the log and a summary. Several processes (torchrun) either keep a full
copy each (`strategy="ddp"`: the layer-wise stage's layers are split between them, the other stages run
data-parallel with DDP) or shard teacher and student with FSDP2 (`strategy="fsdp"`, see `sharding.py`: every
stage data-parallel, each process holding 1/world of the weights and optimizer state).
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import nullcontext
from pathlib import Path

import torch

from come.data import split_windows, tokenize
from come.distillation import stages
from come.distillation.checkpoint import NAME, Checkpoints
from come.distillation.config import (
    LOG_FILE,
    STAGES,
    SUMMARY_JSON,
    SUMMARY_MD,
    DistillConfig,
    DistillResult,
    training_text,
)
from come.distillation.correspond import check_pair, warn_unrelated_teacher
from come.distillation.loop import RunState, lr_factor, train_stage
from come.distillation.lora import add_lora
from come.distillation.processes import Processes
from come.distillation.summary import distill_command, make_summary, summary_text
from come.errors import ComeError
from come.io import check_output_dir, output_lock
from come.models import get_adapter, load_config, load_model, parse_dtype, save_dtype_for
from come.plan import PLAN_FILE, Plan, base_model_path
from come.runstore import RunFolder

__all__ = ["STAGES", "DistillConfig", "DistillResult", "Run", "distill", "lr_factor", "summary_text",
           "training_text"]


class Run:
    """One distillation run in one process: the models, the training windows, where the run stands."""

    def __init__(self, cfg: DistillConfig, d: Processes, on_step=None):
        self.cfg, self.d, self.on_step = cfg, d, on_step
        self.fsdp = cfg.strategy == "fsdp"
        self.peft = None  # under FSDP, the peft model a LoRA stage trains (adapters added before sharding)
        self.store = RunFolder(cfg.out, "run")
        self.checkpoints = Checkpoints(self.store, cfg, d, self.fsdp)
        self.checkpoint_warned = False  # a checkpoint that could not be written is said once
        self.state = RunState()
        self.steps_run = 0
        self.autocast = (lambda: torch.autocast(torch.device(d.device).type, dtype=torch.bfloat16)) \
            if cfg.autocast else nullcontext

    # --- setup ---
    def load(self) -> None:
        cfg = self.cfg
        self.plan = Plan.load(cfg.student)  # a missing plan fails before any weights are read
        config = load_config(cfg.student)[0]
        self.save_dtype = save_dtype_for(cfg.save_dtype, config)  # what `come prune --save-dtype` would write
        self.dtype = parse_dtype(cfg.dtype, config, self.d.device)
        where = "cpu" if self.fsdp else self.d.device  # FSDP moves each process's shards to the device
        teacher = base_model_path(self.plan, cfg.teacher, cfg.student)  # a local base: by name, never the hub
        # FSDP on several processes: one copy of each model, read by rank 0, whose weights every process receives
        # into its shards (sharding.shard); the others build them on the meta device
        self.one_copy = self.fsdp and self.d.world > 1
        if self.one_copy and not self.d.main:
            from transformers import AutoTokenizer

            from come.distillation.sharding import empty_model

            self.teacher, self.student = empty_model(teacher, self.dtype), empty_model(cfg.student, self.dtype)
            self.tokenizer = AutoTokenizer.from_pretrained(load_config(cfg.student)[1])
        else:
            self.teacher, _, _ = load_model(teacher, self.dtype, where)
            self.student, self.tokenizer, _ = load_model(cfg.student, self.dtype, where)
        from come.finite import check_finite_weights

        try:
            if self.d.main or not self.one_copy:  # the checks that read weights: where the weights are
                check_finite_weights(self.teacher, teacher)
                check_finite_weights(self.student, cfg.student)
                self.corr = check_pair(self.plan, self.teacher, self.student)
                warn_unrelated_teacher(self.corr, self.teacher, self.student)
            failed = None
        except ComeError as e:
            failed = e
        if self.one_copy:  # every process stops on rank 0's refusal, instead of waiting for it in a collective
            from come.distillation.sharding import broadcast_error

            broadcast_error(failed)
        elif failed is not None:
            raise failed
        if self.one_copy and not self.d.main:
            from come.distillation.correspond import correspondences

            self.corr = correspondences(self.plan.tree)
        self.teacher.requires_grad_(False)
        self.student.requires_grad_(False)
        self.t_adapter = get_adapter(self.teacher)
        if self.fsdp:
            from come.distillation import sharding

            if self.lora_layers() is not None:  # FSDP cannot add modules to a sharded model later
                self.peft = self.add_lora(self.student, self.lora_layers())
                self.student.requires_grad_(False)
            sharding.shard(self.teacher, self.t_adapter.layers, self.d.device, self.dtype, self.one_copy)
            sharding.shard(self.student, get_adapter(self.student).layers, self.d.device, self.dtype, self.one_copy)
        ids = tokenize(self.tokenizer, training_text(cfg.data))
        self.windows = split_windows(ids, cfg.seq_len, f"training ({cfg.data})")
        from come.models import fingerprint
        from come.resume import fingerprint_of

        self.checkpoints.inputs = {"student": fingerprint(cfg.student), "teacher": fingerprint(teacher),
                                   "data": fingerprint_of(self.windows)}
        per_step = cfg.batch_size * cfg.grad_accum
        if self.windows.shape[0] < per_step:
            raise ComeError(f"training data {cfg.data} has {self.windows.shape[0]} windows of {cfg.seq_len} tokens, "
                            f"fewer than one step needs ({per_step}): pass more text or lower --train-batch-size/"
                            "--train-seq-len")
        if (cfg.stage != "layerwise" or self.fsdp) and cfg.batch_size % self.d.world:
            raise ComeError(f"--train-batch-size {cfg.batch_size} must be a multiple of the {self.d.world} processes")

    def micro_batch(self, step: int, micro: int) -> torch.Tensor:
        """The windows of micro-batch `micro` of `step`: a fixed shuffle per epoch, so a resumed run sees the same."""
        cfg, n = self.cfg, self.windows.shape[0]
        start = (step * cfg.grad_accum + micro) * cfg.batch_size
        rows = []
        for p in range(start, start + cfg.batch_size):
            g = torch.Generator().manual_seed(cfg.seed * 100_003 + p // n)
            rows.append(torch.randperm(n, generator=g)[p % n])
        return self.windows[torch.stack(rows)].to(self.d.device)

    def lora_layers(self) -> list[int] | None:
        """The layers that get LoRA adapters in this run (None: no LoRA)."""
        if self.cfg.stage == "lora":
            return list(range(len(self.corr)))
        if self.cfg.train == "lora" and "global" in STAGES[self.cfg.stage]:
            return [c.layer for c in self.corr if c.merged]
        return None

    def add_lora(self, model, layers: list[int]):
        """peft adapters on `layers`, initialised from the run's seed (the same in every process and strategy)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.cfg.seed)
            return add_lora(model, layers, self.cfg.lora_rank, self.cfg.lora_alpha)

    # --- what the loop calls ---
    def log(self, record: dict) -> None:
        if self.d.main:
            with open(self.store.partial / LOG_FILE, "a") as f:
                f.write(json.dumps(record) + "\n")
        self.state.log_lines += 1

    def save_checkpoint(self, model, opt) -> None:
        """The checkpoint for `--resume`. On one process a checkpoint that cannot be written (a full disk) is a
        warning and the training goes on, as in `come prune`: the student in memory is the result, the checkpoint
        only insurance. Several processes write it together, so there a failure stops the run."""
        try:
            self.checkpoints.save(model, self.student, opt, self.state.to_dict())
        except Exception as e:
            if self.d.world > 1:
                raise
            shutil.rmtree(self.store.staging(NAME), ignore_errors=True)
            if not self.checkpoint_warned:
                import logging

                from come.io import describe_error

                logging.getLogger("come").warning(
                    "could not write the checkpoint in %s (%s): going on without it (a run stopped now resumes "
                    "from the last checkpoint written, if any)", self.store.partial, describe_error(e))
                self.checkpoint_warned = True

    def perplexity(self, key: str) -> None:
        """Perplexity of the student on the evaluation part, stored under `key` (rank 0 measures; under FSDP
        every rank runs the same windows, since each forward gathers the shards of all)."""
        if not self.cfg.ppl_windows or key in self.state.ppl:
            return
        if self.d.main or self.fsdp:
            from come.eval.ppl import perplexity

            r = perplexity(self.student, self.tokenizer, self.cfg.ppl_data, self.cfg.ppl_seq_len,
                           self.cfg.ppl_windows, batch_size=4, progress=False)
            self.state.ppl[key] = r
        self.state.ppl = self.d.gather(self.state.ppl)[0]

    # --- the run ---
    def run(self) -> DistillResult:
        cfg = self.cfg
        resume = self.checkpoints.read() if cfg.resume else None
        if resume is not None:
            self.state = RunState.from_dict(resume)
            if self.d.main:  # drop log lines of steps after the checkpoint: they are redone
                log = self.store.partial / LOG_FILE
                log.write_text("".join(log.read_text().splitlines(keepends=True)[: self.state.log_lines]))
            if resume["stage"] in self.state.done or resume["stage"] is None:
                self.checkpoints.load_weights(self.student)
        self.perplexity("before")
        names = STAGES[cfg.stage]
        for name in names:
            if name in self.state.done:
                continue
            here = resume is not None and resume["stage"] == name
            if here and name == "layerwise":
                self.checkpoints.load_weights(self.student)
            stage = stages.BUILD[name](self, here)
            train_stage(self, stage, resume["step"] if here else None)
            if stage.merge_lora and not self.fsdp:  # under FSDP, merged when the student is gathered
                self.student = stage.model.merge_and_unload()
            self.state.done.append(name)
            self.perplexity(f"after_{name}")
            if cfg.checkpoint_every and name != names[-1]:  # a later stage resumes from here
                self.save_checkpoint(self.student, None)
        return self.finish()

    def gathered_student(self):
        """Under FSDP, the trained student as one plain model on rank 0 (None elsewhere; collective): its shards
        gathered into CPU memory, loaded into a skeleton built on the meta device, LoRA adapters merged."""
        from come.distillation import sharding
        from come.models import meta_model

        state = sharding.gather(self.student)
        if not self.d.main:
            return None
        model = meta_model(self.student.config)
        peft = self.add_lora(model, self.lora_layers()) if self.peft is not None else None
        model.load_state_dict(state, assign=True)
        if getattr(model.config, "tie_word_embeddings", False):
            model.tie_weights()
        return peft.merge_and_unload() if peft is not None else model

    def finish(self) -> DistillResult:
        """The student saved as `come prune` saves its output (weights in --save-dtype, tokenizer, plan, summary
        and model card), with the log and the distillation summary; the run folder is removed."""
        from come.prune import describe, save_model

        summary = make_summary(self.cfg, self.state, self.d, self.plan)
        student = self.gathered_student() if self.fsdp else self.student
        if self.d.main:
            def write(tmp: Path) -> None:
                save_model(student, tmp, self.save_dtype)
                self.tokenizer.save_pretrained(tmp)
                self.plan.save(tmp / PLAN_FILE)
                describe(tmp, self.plan, "distill", distill_command(self.cfg))  # prune summary, model card
                shutil.copy(self.store.partial / LOG_FILE, tmp / LOG_FILE)
                (tmp / SUMMARY_JSON).write_text(json.dumps(summary, indent=1))
                (tmp / SUMMARY_MD).write_text(summary_text(summary))

            self.store.publish_new(write, self.cfg.overwrite)  # a failing save: the student in a fallback folder
        self.d.barrier()
        return DistillResult(self.store.out, summary)


def distill(config: DistillConfig | None = None, on_step=None, **kwargs) -> DistillResult:
    """Distil the pruned student of `config` from its teacher; writes an HF folder + plan + summary to `out`.

    `on_step({"stage", "step", "run_step", "loss"})` is called after every optimizer step (and its checkpoint), in
    every process; an exception it raises stops the run, which `resume=True` continues from the last checkpoint."""
    cfg = (config or DistillConfig(**kwargs)).validate()
    check_output_dir(cfg.out, cfg.overwrite, inputs(cfg))
    if cfg.ppl_windows:  # perplexity windows longer than the student's context: refused before any weights load
        from come.preflight import check_context

        check_context(load_config(cfg.student)[0], cfg.ppl_seq_len, "--ppl-seq-len")
    main = os.environ.get("RANK", "0") == "0"
    with output_lock(cfg.out) if main else nullcontext():  # a second run on this --out is refused
        return _distill(cfg, on_step)


def inputs(cfg: DistillConfig) -> list:
    """What a distillation reads, that --out must never replace: the student, the teacher, the text files."""
    plan = Plan.load(cfg.student)  # a missing plan fails before any weights are read
    teacher = base_model_path(plan, cfg.teacher, cfg.student)
    return [cfg.student, teacher, cfg.data, cfg.ppl_data]


def _distill(cfg: DistillConfig, on_step) -> DistillResult:
    store = RunFolder(cfg.out, "run")
    store.claim(cfg.resume, cfg.overwrite)
    d = Processes(cfg.device, group=cfg.strategy == "fsdp")
    try:
        torch.manual_seed(cfg.seed)
        run = Run(cfg, d, on_step)
        run.load()
        if d.main:
            store.open(cfg.resume)  # without --resume, an earlier partial folder (--overwrite) is discarded
        d.barrier()
        try:
            return run.run()
        except BaseException:
            if d.main:
                store.abandon(keep=run.checkpoints.exists())  # nothing to resume from: leave no trace
            raise
    finally:
        d.close()
