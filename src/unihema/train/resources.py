"""What the machine lends a training run: CPU cores for the data workers and memory for a step.

:class:`Machine` gathers the three questions the trainer asks (how many cores this process may run on,
how much memory is available now, how many training processes share the machine); a test passes one
with fixed answers instead of the real ones. :func:`worker_count` caps the data workers by the cores.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

MEMINFO = Path("/proc/meminfo")
# (limit, usage) of the memory cgroup a container runs in: version 2, then version 1.
CGROUP_MEMORY = (
    (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory.current")),
    (
        Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"),
        Path("/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ),
)


def usable_cores() -> int:
    """CPU cores this process may run on (``os.sched_getaffinity``; ``os.cpu_count`` where it is missing)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def available_memory(device: torch.device) -> int | None:
    """Bytes that can be allocated now without swapping or an out-of-memory kill: on a CUDA device its free
    memory plus what PyTorch's allocator holds unused; else ``MemAvailable`` of ``/proc/meminfo``, lowered
    to the room left under the memory cgroup's limit (a container's); None where neither is known."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    known = [room for room in (_meminfo_available(), _cgroup_room()) if room is not None]
    return min(known) if known else None


def _meminfo_available() -> int | None:
    try:
        for line in MEMINFO.read_text(encoding="ascii").splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_room() -> int | None:
    for limit_path, usage_path in CGROUP_MEMORY:
        try:
            limit = limit_path.read_text(encoding="ascii").strip()
            if limit == "max":
                return None
            return max(0, int(limit) - int(usage_path.read_text(encoding="ascii")))
        except (OSError, ValueError):
            continue
    return None


def local_processes() -> int:
    """Training processes on this machine (``LOCAL_WORLD_SIZE`` under ``torchrun``, else 1)."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


@dataclass(frozen=True)
class Machine:
    """The resources a run may use, as functions asked when needed.

    Attributes:
        cores: CPU cores this process may run on.
        available_memory: bytes available now on a device (None: unknown, the memory check is skipped).
        local_processes: training processes sharing this machine's cores and memory.
    """

    cores: Callable[[], int] = usable_cores
    available_memory: Callable[[torch.device], int | None] = available_memory
    local_processes: Callable[[], int] = local_processes


def worker_count(requested: int, cap: bool, machine: Machine) -> tuple[int, str | None]:
    """Data workers to start for ``requested`` (``data.num_workers``) and, when that differs or is more
    than the cores allow, why (a sentence for the log).

    The cap leaves one core of this process's share for the training process itself: with ``c`` cores and
    ``p`` training processes on the machine, at most ``c // p - 1`` workers per process.
    """
    cores, processes = machine.cores(), machine.local_processes()
    allowed = max(0, cores // processes - 1)
    if requested <= allowed:
        return requested, None
    share = f"{cores} CPU core{'s' if cores != 1 else ''}"
    share += f" shared by {processes} training processes" if processes > 1 else ""
    where = f"this process may run on {share} (os.sched_getaffinity)"
    if not cap:
        return requested, (
            f"data.num_workers {requested} kept (data.cap_workers: false) although {where}; at most "
            f"{allowed} would leave a core for training"
        )
    return allowed, (
        f"data.num_workers {requested} capped to {allowed}: {where} and the training process needs one of "
        f"them; set data.cap_workers: false to start {requested}"
    )
