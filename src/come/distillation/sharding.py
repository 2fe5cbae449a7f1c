"""`--strategy fsdp`: PyTorch's FSDP2 (`torch.distributed.fsdp.fully_shard`) over teacher and student, checkpoints
through `torch.distributed.checkpoint` (readable by any number of processes), and the gathered student.

Each decoder layer is one FSDP unit, the rest of the model (embeddings, final norm, LM head) the root unit. A unit's
weights are all-gathered just before it runs and freed after; gradients are reduce-scattered, so every process keeps
1/world of the weights, gradients and AdamW state. A merged layer can run on its own (the layer-wise stage) because
it is a unit by itself.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor


def mixed_precision(device: str, dtype: torch.dtype) -> MixedPrecisionPolicy:
    """On GPUs: gather and compute in bf16, reduce gradients in fp32 (unless the weights are float32 by request,
    then everything stays float32); on CPU nothing is cast (bf16 matmuls are slow there)."""
    if str(device).startswith("cuda") and dtype != torch.float32:
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def empty_model(name: str, dtype: torch.dtype) -> torch.nn.Module:
    """The model `name` with its parameters on the meta device (Accelerate's `init_empty_weights`; buffers such as
    RoPE's frequencies are computed for real), in eval mode: what a process that receives its shards builds."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    from come.models import load_config
    from come.models.loading import TRUST_REMOTE_CODE

    config = load_config(name)[0]
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=TRUST_REMOTE_CODE)
    model.eval()
    return model


def broadcast_error(error: Exception | None) -> None:
    """Raise rank 0's `error` (a ComeError, or None) on every process (collective)."""
    from come.errors import ComeError

    box = [None if error is None else str(error)]
    dist.broadcast_object_list(box, src=0)
    if error is not None:
        raise error
    if box[0] is not None:
        raise ComeError(box[0])


def shard(model: torch.nn.Module, layers, device: str, dtype: torch.dtype, from_rank0: bool = False
          ) -> torch.nn.Module:
    """Shard `model` in place over every process: one FSDP unit per decoder layer in `layers`, then the root.

    `from_rank0`: only rank 0 holds the weights (the others built `model` with `empty_model`): each process's shards
    are filled from rank 0's copy (`set_model_state_dict` with `broadcast_from_rank0`), so CPU memory holds one
    copy of the model whatever the number of processes. The root is lazily initialised by a one-token forward so
    that a layer can then run on its own."""
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh(torch.device(device).type, (dist.get_world_size(),))
    mp = mixed_precision(device, dtype)
    full = None
    if from_rank0:
        full = model.state_dict() if dist.get_rank() == 0 else {}
        buffers = {n: b.detach().clone() for n, b in model.named_buffers()}  # to_empty would overwrite them
    for layer in layers:
        fully_shard(layer, mesh=mesh, mp_policy=mp)
    # the root keeps nothing gathered after its forward: a frozen teacher has no backward to free it
    fully_shard(model, mesh=mesh, mp_policy=mp, reshard_after_forward=True)
    if from_rank0:
        if dist.get_rank() != 0:
            model.to_empty(device=device)
            with torch.no_grad():
                for n, b in model.named_buffers():
                    b.copy_(buffers[n])
        set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
        del full
    with torch.no_grad():
        model(input_ids=torch.zeros(1, 1, dtype=torch.long, device=device), use_cache=False)
    return model


def is_sharded(model: torch.nn.Module) -> bool:
    return any(isinstance(p, DTensor) for p in model.parameters())


def local_numel(params) -> int:
    """Elements of `params` this process stores (its shards)."""
    return sum((p.to_local() if isinstance(p, DTensor) else p).numel() for p in params)


def clip_group(params, max_norm: float) -> float:
    """clip_grad_norm_ of one group whose gradients may be FSDP shards: the norm is over the whole group."""
    grads = [p.grad for p in params if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads)
    if isinstance(norm, DTensor):
        norm = norm.full_tensor()
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    return float(norm)


def save_checkpoint(folder, model, opt=None) -> None:
    """Every process writes its shards of `model` (and of `opt`'s state) to `folder` (collective)."""
    state = {"model": get_model_state_dict(model)}
    if opt is not None:
        state["optim"] = get_optimizer_state_dict(model, opt)
    dcp.save(state, checkpoint_id=str(folder))


def load_checkpoint(folder, model, opt=None) -> None:
    """Read a checkpoint of `save_checkpoint` into `model` (and `opt`), whatever number of processes wrote it:
    each process reads the pieces of its own shards."""
    state = {"model": get_model_state_dict(model)}
    if opt is not None:
        state["optim"] = get_optimizer_state_dict(model, opt)
    dcp.load(state, checkpoint_id=str(folder))
    set_model_state_dict(model, state["model"])
    if opt is not None:
        set_optimizer_state_dict(model, opt, state["optim"])


def gather(model) -> dict[str, torch.Tensor]:
    """The full state dict of sharded `model`, in CPU memory on rank 0 (empty elsewhere; collective)."""
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def gather_optimizer(model, opt) -> dict:
    """The full optimizer state of sharded `model`, in CPU memory on rank 0 (collective; tests compare it)."""
    return get_optimizer_state_dict(model, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
