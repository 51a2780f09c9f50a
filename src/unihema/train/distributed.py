"""Multi-process data-parallel training helpers (``torchrun``; gloo on CPU, NCCL on GPU).

Every rank builds the same model and sampler; the sampler gives each rank its own share of every task's
data (``rank``/``world_size``). Gradients are averaged by :class:`torch.nn.parallel.DistributedDataParallel`,
which is rebuilt at each stage because the set of trainable parameters changes with the stage
(:func:`wrap_model`). Only rank 0 writes checkpoints and logs (:func:`is_main_process`).

A training step runs several task-homogeneous micro-batches; each one only touches the parameters of its
task's path. DDP is therefore built with ``find_unused_parameters=True``, all micro-batches but the last run
under ``no_sync()`` (gradients accumulate locally and are reduced once), and every output tensor of the
forward is tied into the loss with a zero weight (:func:`touch_outputs`) so that an output the loss happens
not to use (e.g. attribute logits of a dataset without attributes) does not leave DDP waiting for its
gradient.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import datetime
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

# Generous: a rank can be busy writing a checkpoint while the others wait at a collective.
_PROCESS_GROUP_TIMEOUT = datetime.timedelta(minutes=30)
# While a batch runs in micro-batches: the counts of the whole batch (summed over ranks), by shape.
_WHOLE_BATCH_COUNTS: contextvars.ContextVar[Mapping[tuple[int, ...], torch.Tensor] | None] = (
    contextvars.ContextVar("whole_batch_counts", default=None)
)


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits in the job.

    Attributes:
        rank: global rank (0 for a single process).
        world_size: number of processes (1 for a single process).
        local_rank: rank on this machine (selects the GPU).
        device: the device this rank computes on.
        owns_process_group: :func:`setup` created the process group (so :func:`teardown` destroys it).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_process_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    """True when the environment variables set by ``torchrun`` are present."""
    return all(
        name in os.environ for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    )


def setup(device: str = "auto") -> DistributedContext:
    """Initialise the process group when launched by ``torchrun`` and pick this rank's device.

    ``device`` is ``"auto"`` (CUDA when available, else CPU), ``"cpu"`` or ``"cuda"``. The backend is NCCL on
    CUDA and gloo on CPU. Without ``torchrun`` variables a single-process context is returned.
    """
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available")
    if not launched_by_torchrun():
        return DistributedContext(device=torch.device("cuda" if use_cuda else "cpu"))
    rank, world_size, local_rank = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        torch_device = torch.device("cuda", local_rank)
    else:
        torch_device = torch.device("cpu")
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            rank=rank,
            world_size=world_size,
            timeout=_PROCESS_GROUP_TIMEOUT,
        )
    return DistributedContext(
        rank=rank, world_size=world_size, local_rank=local_rank, device=torch_device, owns_process_group=owns
    )


def teardown(context: DistributedContext) -> None:
    """Destroy the process group if :func:`setup` created it (a caller's own group is left alone)."""
    if context.owns_process_group and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main_process() -> bool:
    return rank() == 0


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum of ``tensor`` over ranks (a new tensor; the input itself when not distributed)."""
    if not is_distributed():
        return tensor
    out = tensor.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean of ``tensor`` over ranks (for logging)."""
    return all_reduce_sum(tensor) / world_size()


def all_reduce_min(tensor: torch.Tensor) -> torch.Tensor:
    """Element-wise minimum of ``tensor`` over ranks (so that every rank takes the same decision)."""
    if not is_distributed():
        return tensor
    out = tensor.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.MIN)
    return out


def per_rank_normaliser(local_count: torch.Tensor) -> torch.Tensor:
    """Normaliser making a per-rank ``sum / normaliser`` loss average (through DDP) to the global mean.

    Returns ``max(global_count, 1) / world_size`` (element-wise for vector counts): each rank divides its local
    sum by it, DDP averages gradients over ranks, and the result equals one process dividing the global sum
    by ``max(global_count, 1)``.

    Inside :func:`whole_batch_counts` (a batch run in micro-batches) the global count is the one given
    there for the whole batch, so each micro-batch's sum is divided by what the whole batch's would be and
    the accumulated gradient equals the whole batch's.
    """
    given = _WHOLE_BATCH_COUNTS.get()
    if given is None:
        total = all_reduce_sum(local_count.float())
    else:
        shape = tuple(local_count.shape)
        if shape not in given:
            raise RuntimeError(f"no whole-batch count of shape {shape} was given (have {sorted(given)})")
        total = given[shape].to(device=local_count.device, dtype=torch.float32)
    return total.clamp(min=1.0) / world_size()


@contextlib.contextmanager
def whole_batch_counts(counts: Mapping[tuple[int, ...], torch.Tensor] | None) -> Iterator[None]:
    """Make :func:`per_rank_normaliser` use ``counts`` (shape of the count -> its total over the whole
    batch and every rank) in this block; ``None`` leaves it as it is."""
    token = _WHOLE_BATCH_COUNTS.set(counts) if counts is not None else None
    try:
        yield
    finally:
        if token is not None:
            _WHOLE_BATCH_COUNTS.reset(token)


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def wrap_model(model: nn.Module, context: DistributedContext) -> nn.Module:
    """Wrap ``model`` in DDP for the current set of trainable parameters (call again after each freeze).

    Returns the model itself in a single process or when nothing is trainable.
    """
    if not context.enabled or not any(p.requires_grad for p in model.parameters()):
        return model
    device_ids = [context.device.index] if context.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=True)


def sync_context(model: nn.Module, synchronise: bool) -> contextlib.AbstractContextManager:
    """``model.no_sync()`` for a DDP model when ``synchronise`` is False, else a null context."""
    if not synchronise and isinstance(model, nn.parallel.DistributedDataParallel):
        return model.no_sync()
    return contextlib.nullcontext()


def _iter_tensors(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _iter_tensors(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _iter_tensors(item)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):  # the typed model outputs
        for item in dataclasses.fields(value):
            yield from _iter_tensors(getattr(value, item.name))


def touch_outputs(loss: torch.Tensor, outputs: Any) -> torch.Tensor:
    """``loss`` plus zero times the sum of every differentiable output tensor (see the module docstring).

    The value is unchanged for finite outputs; every parameter that produced an output receives a (zero)
    gradient, which DDP needs to finish its reduction.
    """
    extra = [t.float().sum() for t in _iter_tensors(outputs) if t.requires_grad and t.is_floating_point()]
    if not extra:
        return loss
    return loss + 0.0 * torch.stack(extra).sum()
