"""Data-parallel runs: one run, several processes, launched by torchrun (`torch.distributed.run`).

`spambench run --nproc N` re-launches itself under torchrun (or an external `torchrun ... -m
spam_bench.runners.cli run ...` does), which sets RANK / WORLD_SIZE / MASTER_ADDR in each process.
`World.from_env` joins the process group (gloo on CPU, NCCL on CUDA). The division of labour:

- every rank resolves the same spec and checks the same code fingerprint (`agree`): a rank whose
  checkout differs refuses, rather than training something else under the same run id;
- rank 0 owns the run folder: the lock, metrics, checkpoints and the summary; the other ranks keep
  nothing (their context has no recorder) and receive rank 0's checkpoint when a run resumes;
- the task shards each global batch by rank (`shard`) and averages gradients with DDP; the global
  batch stays the recipe's, so the loss curve equals the one-process run's up to summation order;
- every rank seeds alike, so optimizer randomness (SPAM's sparse masks, its reset schedule) and
  spike injection are identical on all ranks, and so are the updates.

Only tasks that declare `distributed = True` accept a world larger than one (llm, llm4bit).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from spam_bench.suite.errors import ConfigError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1

    @classmethod
    def from_env(cls, device: str) -> World:
        """The world torchrun describes in the environment, with its process group joined (once)."""
        size = int(os.environ.get("WORLD_SIZE", "1") or 1)
        if size <= 1:
            return cls()
        if not dist.is_initialized():
            backend = "nccl" if device.startswith("cuda") else "gloo"
            if backend == "nccl":
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            dist.init_process_group(backend)
        return cls(rank=dist.get_rank(), size=dist.get_world_size())

    @classmethod
    def from_process_group(cls) -> World:
        """The world of a default process group someone else has already set up; a world of one if none.

        Ray Train's workers (runners/ray_train.py) are an example: Ray initialises torch.distributed
        itself (gloo for CPU workers, NCCL when each has a GPU) and selects each worker's CUDA device
        before our code runs. We only read rank and size, and the group stays its owner's: whoever
        made the world this way must not `close` it (Ray destroys it when the workers stop).
        """
        if not (dist.is_available() and dist.is_initialized()):
            return cls()
        return cls(rank=dist.get_rank(), size=dist.get_world_size())

    # --- collectives (no-ops in a world of one) ---
    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank. Pickled between this run's own processes only (never read
        from a store)."""
        if not self.active:
            return obj
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def mean(self, value: float) -> float:
        """The mean of a float over the ranks (a loss logged as the global batch's)."""
        if not self.active:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t)
        return float(t.item()) / self.size

    def agree(self, what: str, value: str) -> None:
        """Refuse (one line) unless every rank has the same `value`: the spec, the code fingerprint."""
        if not self.active:
            return
        values: list[Any] = [None] * self.size
        dist.all_gather_object(values, value)
        if len(set(values)) > 1:
            raise ConfigError("nproc", self.size, f"ranks with the same {what} (rank values: {', '.join(values)})")

    def shard(self, batch_size: int) -> slice:
        """This rank's rows of a global batch of `batch_size` (which the world size must divide)."""
        if batch_size % self.size:
            raise ConfigError("nproc", self.size, f"a divisor of batch_size {batch_size}")
        per = batch_size // self.size
        return slice(self.rank * per, (self.rank + 1) * per)

    def close(self) -> None:
        if self.active and dist.is_initialized():
            dist.destroy_process_group()


SINGLE = World()
