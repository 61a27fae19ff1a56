"""Multi-process data-parallel training with PyTorch's own runtime: `torchrun` starts the processes and sets
RANK / WORLD_SIZE / LOCAL_RANK, `init_from_env` joins the process group (`nccl` on GPUs, `gloo` on CPUs), and the
training loop wraps the module in DistributedDataParallel and gives each process its share of every batch.

Every process reads and featurises the same data and draws the same batch order from the same seed; each takes
every world_size-th item of each batch, so one step averages the gradients of the whole batch, as one process
would. Validation runs on every process over all held-out clips (identical numbers, so every process takes the
same keep-best and early-stopping decisions). Only rank 0 writes files.
"""

from __future__ import annotations

import logging
import os
from typing import Iterable

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


def launched() -> bool:
    """True inside a process that torchrun started for a job of more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: torch.device) -> None:
    """Join the job's process group once (no-op outside torchrun or when already joined). On CUDA each process
    uses GPU LOCAL_RANK."""
    if not launched() or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    log.info("process %d of %d joined the training job (%s)", rank(), world_size(), dist.get_backend())


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """The process that writes bundles and reports (the only one outside a distributed job)."""
    return rank() == 0


def all_sum(value: torch.Tensor) -> torch.Tensor:
    """The sum over processes (the value itself outside a job)."""
    if not active():
        return value
    out = value.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def average_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """Replace each gradient by its mean over processes (what DistributedDataParallel does during backward), for
    steps that cannot run under it. Every process computed the same losses, so the same parameters have gradients."""
    if not active():
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])  # one collective instead of one per tensor
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def all_gather_cat(values: torch.Tensor) -> torch.Tensor:
    """Every process's 1-D `values` concatenated in rank order (lengths may differ)."""
    if not active():
        return values
    n = torch.tensor([values.numel()], device=values.device)
    sizes = [torch.zeros_like(n) for _ in range(world_size())]
    dist.all_gather(sizes, n)
    longest = int(max(int(s) for s in sizes))
    padded = torch.zeros(longest, dtype=values.dtype, device=values.device)
    padded[: values.numel()] = values
    parts = [torch.zeros_like(padded) for _ in range(world_size())]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(s)] for p, s in zip(parts, sizes)])


def finish() -> None:
    """Leave the process group at the end of a training command, together: the other processes wait for rank 0 to
    have written its files (a process leaving while others still used the group made gloo abort)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
