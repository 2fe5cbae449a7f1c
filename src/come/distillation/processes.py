"""The processes of a distillation run: rank, world size and device, and the collectives the run needs."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


class Processes:
    """Rank, world size and device; torch.distributed is initialised when launched by torchrun, and for FSDP
    (`group`) also in a single process (a group of one, FSDP's single-device path)."""

    def __init__(self, device: str, group: bool = False):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda" and self.world > 1:
            device = f"cuda:{local}"
        self.device = device
        self.owns_group = False
        if (self.world > 1 or group) and not dist.is_initialized():
            if device.startswith("cuda"):
                torch.cuda.set_device(torch.device(device))
            backend = "nccl" if device.startswith("cuda") else "gloo"
            if self.world > 1:
                dist.init_process_group(backend)
            else:
                dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
            self.owns_group = True

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def gather(self, obj) -> list:
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
