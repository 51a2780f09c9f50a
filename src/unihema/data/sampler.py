"""Multi-task batch sampling: task-homogeneous batches, per-dataset weights, rank sharding, exact resume.

:class:`MultiTaskBatchSampler` indexes the concatenation of the per-task sample sequences, in the order
of ``samples_by_task``'s keys (task ``t``'s sample ``i`` has global index ``offset[t] + i``; see
:attr:`MultiTaskBatchSampler.offsets`), and yields lists of global indices.

Per epoch and per task, the plan is:

1. an *order* of the task's samples, identical on every rank: a seeded permutation, or, when
   ``dataset_weights`` are given, ``len(task)`` draws with replacement where a sample of dataset ``d``
   is drawn with probability proportional to ``dataset_weights[d]`` (1 for unlisted datasets), so the
   expected share of dataset ``d`` is ``w_d * n_d / sum(w * n)``;
2. like ``DistributedSampler``, the order is padded (by repeating its head) to a multiple of
   ``world_size`` (or truncated with ``drop_last``) and rank ``r`` takes every ``world_size``-th element
   starting at ``r``: ranks get disjoint shares of equal length;
3. the rank's share is cut into batches of ``k_per_task[task]`` (the last one may be shorter unless
   ``drop_last``).

Tasks are then interleaved, identically on every rank (so all ranks run the same task at each step):

- ``"round_robin"``: one batch per task in turn, skipping tasks that have run out;
- ``"weighted"``: a seeded random interleave. Without ``task_weights`` each task contributes exactly its
  own number of batches (every sample once per epoch, tasks mixed at random); with ``task_weights``
  each step draws its task with probability proportional to the weight (the epoch keeps the same total
  length; a task drawn more often than it has batches wraps around its share);
- ``"joint"``: every step yields one group holding one batch of *every* task (the paper's step 3, where
  the losses of a detection, a segmentation and a classification batch are summed before a single
  optimiser step). The group is a flat list ordered by task; ``unihema.data.loader.collate_by_task``
  splits it into one contract batch per task, the trainer runs one forward per batch and backpropagates
  the sum of the losses. An epoch has as many steps as the task with the fewest batches
  (``joint_length="min"``, as the paper's zipped loaders) or the most (``"max"``, shorter tasks wrap).

``set_epoch`` reseeds the plan; ``state_dict``/``load_state_dict`` record the epoch and the number of
batches consumed so a resumed run continues the exact same sequence mid-epoch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

import numpy as np
from torch.utils.data import Sampler

from unihema.data.schema import Sample, Task

MODES: tuple[str, ...] = ("round_robin", "weighted", "joint")
_STATE_VERSION = 1
_INTERLEAVE_STREAM = 1_000_003  # RNG stream id of the task interleave, distinct from task ids


class MultiTaskBatchSampler(Sampler[list[int]]):
    """Task-homogeneous (or, in ``"joint"`` mode, per-task grouped) batches of global indices.

    Args:
        samples_by_task: the samples of each task (lists or any sized sequence, e.g. a manifest
            dataset). Only lengths are read, plus each sample's ``dataset`` when weights are given.
        k_per_task: batch size for every task, or per task.
        dataset_weights: per-sample sampling weight by dataset name (see the module docstring);
            None samples every sample exactly once per epoch.
        seed: base seed; the plan of epoch ``e`` depends only on ``(seed, e)`` and the task sizes.
        rank, world_size: this process's share in distributed training.
        mode: ``"round_robin"``, ``"weighted"`` or ``"joint"``.
        task_weights: ``"weighted"`` mode only: relative probability of each task per step.
        shuffle: False keeps every task in its natural order (evaluation); weights then don't apply.
        drop_last: truncate each task's order to a multiple of ``world_size`` instead of padding it,
            and drop incomplete batches.
        joint_length: ``"joint"`` mode only: ``"min"`` or ``"max"`` steps per epoch (see above).
    """

    def __init__(
        self,
        samples_by_task: Mapping[Task, Sequence[Sample]],
        k_per_task: Mapping[Task, int] | int,
        dataset_weights: Mapping[str, float] | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        mode: Literal["round_robin", "weighted", "joint"] = "round_robin",
        *,
        task_weights: Mapping[Task, float] | None = None,
        shuffle: bool = True,
        drop_last: bool = False,
        joint_length: Literal["min", "max"] = "min",
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"MultiTaskBatchSampler: mode must be one of {MODES}, got {mode!r}")
        if not samples_by_task:
            raise ValueError("MultiTaskBatchSampler: samples_by_task is empty")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"MultiTaskBatchSampler: need 0 <= rank < world_size, got rank={rank}, world_size={world_size}"
            )
        if joint_length not in ("min", "max"):
            raise ValueError(
                f"MultiTaskBatchSampler: joint_length must be 'min' or 'max', got {joint_length!r}"
            )
        if task_weights is not None and mode != "weighted":
            raise ValueError("MultiTaskBatchSampler: task_weights only apply to mode='weighted'")
        self.tasks: tuple[Task, ...] = tuple(Task(t) for t in samples_by_task)
        self.sizes: dict[Task, int] = {Task(t): len(s) for t, s in samples_by_task.items()}
        for task, size in self.sizes.items():
            if size == 0:
                raise ValueError(f"MultiTaskBatchSampler: task {task.value!r} has no samples")
        self.k: dict[Task, int] = self._batch_sizes(k_per_task)
        self.offsets: dict[Task, int] = {}
        running = 0
        for task in self.tasks:
            self.offsets[task] = running
            running += self.sizes[task]
        self.total_size = running
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.mode = mode
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.joint_length = joint_length
        self.task_weights = self._task_weights(task_weights)
        self.sample_weights = self._sample_weights(samples_by_task, dataset_weights)
        self.epoch = 0
        self._resume_at = 0  # batches of the current epoch to skip on the next __iter__
        self._yielded = 0
        for task in self.tasks:
            if self._num_batches(task) == 0:
                raise ValueError(
                    f"MultiTaskBatchSampler: task {task.value!r} has {self.sizes[task]} samples, too few for one "
                    f"batch of {self.k[task]} per rank on {world_size} ranks with drop_last"
                )

    # ------------------------------------------------------------------ configuration checks

    def _batch_sizes(self, k_per_task: Mapping[Task, int] | int) -> dict[Task, int]:
        if isinstance(k_per_task, Mapping):
            given = {Task(t): int(k) for t, k in k_per_task.items()}
            missing = [t.value for t in self.tasks if t not in given]
            if missing:
                raise ValueError(f"MultiTaskBatchSampler: k_per_task has no batch size for {missing}")
            k = {t: given[t] for t in self.tasks}
        else:
            k = {t: int(k_per_task) for t in self.tasks}
        for task, size in k.items():
            if size < 1:
                raise ValueError(
                    f"MultiTaskBatchSampler: batch size of {task.value!r} must be >= 1, got {size}"
                )
        return k

    def _task_weights(self, task_weights: Mapping[Task, float] | None) -> np.ndarray | None:
        if task_weights is None:
            return None
        given = {Task(t): float(w) for t, w in task_weights.items()}
        unknown = [t.value for t in given if t not in self.sizes]
        if unknown:
            raise ValueError(f"MultiTaskBatchSampler: task_weights name tasks without samples: {unknown}")
        weights = np.asarray([given.get(t, 0.0) for t in self.tasks], dtype=np.float64)
        if (weights < 0).any() or not np.isfinite(weights).all() or weights.sum() <= 0:
            raise ValueError(
                f"MultiTaskBatchSampler: task_weights must be finite, >= 0 and not all 0, got {given}"
            )
        return weights / weights.sum()

    def _sample_weights(
        self, samples_by_task: Mapping[Task, Sequence[Sample]], dataset_weights: Mapping[str, float] | None
    ) -> dict[Task, np.ndarray | None]:
        out: dict[Task, np.ndarray | None] = {t: None for t in self.tasks}
        if dataset_weights is None:
            return out
        for name, weight in dataset_weights.items():
            if not np.isfinite(weight) or weight < 0:
                raise ValueError(
                    f"MultiTaskBatchSampler: dataset_weights[{name!r}] must be finite and >= 0, got {weight}"
                )
        for task, samples in samples_by_task.items():
            task = Task(task)
            weights = np.asarray(
                [float(dataset_weights.get(s.dataset, 1.0)) for s in samples], dtype=np.float64
            )
            total = weights.sum()
            if total <= 0:
                raise ValueError(f"MultiTaskBatchSampler: every dataset of task {task.value!r} has weight 0")
            if not np.all(weights == weights[0]):  # uniform weights: a plain permutation is exact
                out[task] = weights / total
        return out

    # ------------------------------------------------------------------ the plan of one epoch

    def _rng(self, stream: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, stream])

    def _shard_length(self, task: Task) -> int:
        n, ws = self.sizes[task], self.world_size
        return n // ws if self.drop_last else -(-n // ws)

    def _num_batches(self, task: Task) -> int:
        length, k = self._shard_length(task), self.k[task]
        return length // k if self.drop_last else -(-length // k)

    def _shard(self, task: Task) -> np.ndarray:
        """This rank's share of the task's order for the current epoch (local indices)."""
        n = self.sizes[task]
        task_id = self.tasks.index(task)
        if not self.shuffle:
            order = np.arange(n, dtype=np.int64)
        elif self.sample_weights[task] is not None:
            order = self._rng(task_id).choice(n, size=n, replace=True, p=self.sample_weights[task])
        else:
            order = self._rng(task_id).permutation(n)
        length = self._shard_length(task) * self.world_size
        order = np.resize(order, length)  # truncates, or pads by repeating from the head
        return order[self.rank :: self.world_size].astype(np.int64)

    def _task_sequence(self) -> np.ndarray:
        """Task id of every step (not used in joint mode); identical on every rank."""
        counts = np.asarray([self._num_batches(t) for t in self.tasks], dtype=np.int64)
        ids = np.arange(len(self.tasks))
        if self.mode == "round_robin":
            rounds = np.arange(counts.max())
            grid = np.where(rounds[:, None] < counts[None, :], ids[None, :], -1)
            sequence = grid.reshape(-1)
            return sequence[sequence >= 0]
        rng = self._rng(_INTERLEAVE_STREAM)
        if self.task_weights is None:
            return rng.permutation(np.repeat(ids, counts))
        return rng.choice(ids, size=int(counts.sum()), replace=True, p=self.task_weights)

    def mixed_steps(self) -> int:
        """Steps of an epoch during which every task still has batches: in ``"round_robin"`` mode the
        tasks alternate until the one with the fewest batches runs out, and the rest of the epoch trains
        only the others; the whole epoch in the other modes."""
        if self.mode != "round_robin":
            return len(self)
        return len(self.tasks) * min(self._num_batches(t) for t in self.tasks)

    def tail_tasks(self) -> list[Task]:
        """The tasks still training after :meth:`mixed_steps` (``[]`` when every task trains to the end)."""
        if self.mode != "round_robin":
            return []
        fewest = min(self._num_batches(t) for t in self.tasks)
        return [t for t in self.tasks if self._num_batches(t) > fewest]

    def __len__(self) -> int:
        if self.mode == "joint":
            counts = [self._num_batches(t) for t in self.tasks]
            return min(counts) if self.joint_length == "min" else max(counts)
        return sum(self._num_batches(t) for t in self.tasks)

    def _batch(self, task: Task, shard: np.ndarray, j: int) -> list[int]:
        """Global indices of the task's ``j``-th batch on this rank (wrapping around past its end)."""
        k = self.k[task]
        if j < self._num_batches(task):
            local = shard[j * k : (j + 1) * k]
        else:
            local = shard[(j * k + np.arange(k)) % len(shard)]
        return (local + self.offsets[task]).tolist()

    def __iter__(self) -> Iterator[list[int]]:
        start, self._resume_at = self._resume_at, 0
        shards = {t: self._shard(t) for t in self.tasks}
        self._yielded = start
        if self.mode == "joint":
            for step in range(start, len(self)):
                group: list[int] = []
                for task in self.tasks:
                    group += self._batch(task, shards[task], step)
                self._yielded = step + 1
                yield group
            return
        sequence = self._task_sequence()
        # The j-th occurrence of a task in the sequence is that task's j-th batch.
        seen = np.zeros(len(self.tasks), dtype=np.int64)
        for task_id in sequence[:start]:
            seen[task_id] += 1
        for step in range(start, len(sequence)):
            task_id = int(sequence[step])
            task = self.tasks[task_id]
            batch = self._batch(task, shards[task], int(seen[task_id]))
            seen[task_id] += 1
            self._yielded = step + 1
            yield batch

    # ------------------------------------------------------------------ epochs and resume

    def set_epoch(self, epoch: int) -> None:
        """Use the plan of ``epoch`` from the next iteration on (call at the start of every epoch)."""
        if epoch < 0:
            raise ValueError(f"set_epoch: epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)
        self._resume_at = 0
        self._yielded = 0

    def task_of(self, index: int) -> Task:
        """The task of a global index."""
        for task in reversed(self.tasks):
            if index >= self.offsets[task]:
                if index - self.offsets[task] >= self.sizes[task]:
                    break
                return task
        raise IndexError(f"index {index} outside the sampler's {self.total_size} samples")

    def _fingerprint(self) -> str:
        parts = [
            self.mode, str(self.seed), str(self.world_size), str(self.shuffle), str(self.drop_last),
            self.joint_length,
            repr([(t.value, self.sizes[t], self.k[t]) for t in self.tasks]),
            repr(None if self.task_weights is None else self.task_weights.round(12).tolist()),
            repr({t.value: None if w is None else hashlib.sha1(w.tobytes()).hexdigest() for t, w in self.sample_weights.items()}),
        ]  # fmt: skip
        return hashlib.sha1("|".join(parts).encode()).hexdigest()

    def state_dict(self, consumed: int | None = None) -> dict[str, Any]:
        """The position to resume from.

        Args:
            consumed: batches of the current epoch actually trained on. A ``DataLoader`` with workers
                iterates the sampler ahead of training (prefetching), so pass the trainer's own step
                count; when None, the number of batches this sampler has yielded is used.
        """
        position = self._yielded if consumed is None else int(consumed)
        if not 0 <= position <= len(self):
            raise ValueError(f"state_dict: consumed must be in [0, {len(self)}], got {position}")
        return {"version": _STATE_VERSION, "epoch": self.epoch, "consumed": position, "rank": self.rank,
                "fingerprint": self._fingerprint()}  # fmt: skip

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from ``state``: the next iteration yields the remaining batches of its epoch.

        Raises ``ValueError`` when the state was saved by a sampler with other data sizes, batch sizes,
        seed, mode, weights or world size (the sequence would differ).
        """
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"load_state_dict: unsupported sampler state version {state.get('version')!r}")
        if state.get("fingerprint") != self._fingerprint():
            raise ValueError(
                "load_state_dict: the saved sampler had a different configuration (task sizes, batch sizes, "
                "seed, mode, weights or world size); the sequence cannot be resumed exactly"
            )
        self.epoch = int(state["epoch"])
        consumed = int(state["consumed"])
        if not 0 <= consumed <= len(self):
            raise ValueError(f"load_state_dict: consumed={consumed} outside [0, {len(self)}]")
        self._resume_at = consumed
        self._yielded = consumed
