"""Checkpoints of a distillation run, in its run folder (`come.runstore`): `OUT.partial/checkpoint/`.

A checkpoint holds the student's weights (safetensors; under FSDP a `torch.distributed.checkpoint` folder `dcp/`
of every process's shards with the optimizer state), each process's optimizer state (`optim.rankN.pt`, without
FSDP) and `state.json` (the run's `RunState`, the number of processes and the settings). It is written whole
into `checkpoint.tmp/` and then replaces the previous one, so a resumed run always finds a complete one.
"""

from __future__ import annotations

import json

import torch

from come.errors import ComeError
from come.runstore import RunFolder

NAME, STATE = "checkpoint", "state.json"
INPUT_NAMES = {"student": "student's weights or config", "teacher": "teacher's weights or config",
               "data": "training windows"}


class Checkpoints:
    def __init__(self, store: RunFolder, cfg, d, fsdp: bool):
        self.store, self.cfg, self.d, self.fsdp = store, cfg, d, fsdp
        self.folder = store.partial / NAME
        self.inputs: dict = {}  # fingerprints of the student, teacher and training windows the run started from

    def exists(self) -> bool:
        return self.store.committed(NAME, STATE) is not None

    def save(self, model, student, opt, state: dict) -> None:
        """Collective: every process writes its part; `model` is the module the stage trains (the student or
        its LoRA wrapper), `student` the sharded student under FSDP."""
        from safetensors.torch import save_model

        tmp = self.store.staging(NAME)
        if self.d.main:
            self.store.begin(NAME)
            if not self.fsdp:
                save_model(model, str(tmp / "model.safetensors"))
        self.d.barrier()
        if self.fsdp:
            from come.distillation import sharding

            sharding.save_checkpoint(tmp / "dcp", student, opt)
        elif opt is not None:
            torch.save(opt.state_dict(), tmp / f"optim.rank{self.d.rank}.pt")
        self.d.barrier()
        if self.d.main:
            (tmp / STATE).write_text(json.dumps(dict(state, world=self.d.world, config=self.cfg.fingerprint(),
                                                inputs=self.inputs),
                                                indent=1))
            self.store.commit(NAME)
        self.d.barrier()

    def read(self) -> dict:
        """The checkpoint's state, refused when it cannot continue this run (`--resume`)."""
        if not self.exists():
            raise ComeError(f"--resume: no checkpoint in {self.store.partial}: run without --resume (and with "
                            "--checkpoint-every N) first")
        state = json.loads((self.folder / STATE).read_text())
        if state["world"] != self.d.world and not self.fsdp:
            raise ComeError(f"--resume: the checkpoint was written by {state['world']} processes, this run has "
                            f"{self.d.world}: resume with the same number (--strategy fsdp checkpoints "
                            "can be resumed on any number)")
        changed = [k for k, v in self.cfg.fingerprint().items() if state["config"].get(k) != v]
        if changed:
            raise ComeError(f"--resume with other settings than the interrupted run ({', '.join(changed)}): "
                            "resume with the same settings or start over with --overwrite")
        recorded = state.get("inputs") or {}
        changed = [k for k, v in self.inputs.items() if k in recorded and recorded[k] != v]
        if changed:
            raise ComeError(f"--resume: the {' and '.join(INPUT_NAMES.get(k, k) for k in changed)} differ from what "
                            "the interrupted run started from (another model or text at the same path): resume with "
                            "the same inputs or start over with --overwrite")
        return state

    def load_weights(self, model, student=None) -> None:
        """The checkpoint's weights into `model` (under FSDP: into the sharded `student`)."""
        if self.fsdp:
            from come.distillation import sharding

            sharding.load_checkpoint(self.folder / "dcp", student if student is not None else model)
            return
        from safetensors.torch import load_model

        load_model(model, str(self.folder / "model.safetensors"), device=str(self.d.device))

    def load_optimizer(self, opt, student) -> None:
        """The checkpoint's optimizer state into `opt` (under FSDP with the weights, which it is keyed by)."""
        if self.fsdp:
            from come.distillation import sharding

            sharding.load_checkpoint(self.folder / "dcp", student, opt)
            return
        opt.load_state_dict(torch.load(self.folder / f"optim.rank{self.d.rank}.pt", weights_only=True))
