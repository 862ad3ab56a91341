"""One process per device under ``torchrun --nproc_per_node N``: data-parallel fine-tuning, sharded extraction.

torchrun sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT``; without them everything here
is a no-op and every command runs as a single process. With them: gloo on CPU, nccl on GPUs.

Feature extraction (``transferlab extract``, and the front half of ``finetune``) splits the uncached images between
the ranks by cache shard and meets at a barrier (``features.extract``). Fine-tuning wraps the model in DDP
(gradients averaged every step, so the effective batch is N × --batch-size and all ranks keep identical weights);
each rank trains on its own shard through a ``DistributedSampler`` reseeded every epoch; training loss and metric
are reduced over ranks; BatchNorm buffers are synced from rank 0 after each epoch, so every rank scores the full
validation split identically and takes the same early-stopping and LR-restart decisions; and only rank 0 writes
files (checkpoints, records) or prints, so N processes never race on one path.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from transferlab.errors import TransferlabError


@dataclass
class Distributed:
    """This process's place in the job; ``world_size == 1`` means a plain single-process run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    _wrapped: tuple[Any, nn.Module] | None = field(default=None, repr=False)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this process writes files and prints progress."""
        return self.rank == 0

    def training_module(self, net: nn.Module, loader: DataLoader) -> nn.Module:
        """The module to train ``net`` through this epoch; reseeds the loader's shard order.

        DDP is built once per set of trainable parameters (a new stage unfreezes more, so it is rebuilt then;
        rebuilding per epoch would leave stale gradient hooks). The shard order is drawn from torch's RNG, which
        the engine checkpoints (rank 0's draw, broadcast), so a resumed run replays the same order.
        """
        if not self.enabled:
            return net
        if isinstance(loader.sampler, DistributedSampler):
            loader.sampler.set_epoch(self.broadcast(int(torch.randint(2**31 - 1, ()))))
        key = (id(net), tuple(id(p) for p in net.parameters() if p.requires_grad))
        if self._wrapped is None or self._wrapped[0] != key:
            self._wrapped = None  # release the old wrapper (and its hooks) before building the next
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self._wrapped = (key, nn.parallel.DistributedDataParallel(net, device_ids=device_ids))
        return self._wrapped[1]

    def shard(self, loader: DataLoader) -> DataLoader:
        """The same training loader over this rank's shard of the data (itself when not distributed)."""
        if not self.enabled:
            return loader
        if not isinstance(loader.sampler, RandomSampler):
            raise TransferlabError("--balance sampler cannot be combined with torchrun; use --balance weights")
        sampler = DistributedSampler(loader.dataset, num_replicas=self.world_size, rank=self.rank, shuffle=True)
        return DataLoader(
            loader.dataset,
            batch_size=loader.batch_size,
            sampler=sampler,
            num_workers=loader.num_workers,
            drop_last=loader.drop_last and len(sampler) > (loader.batch_size or 1),  # never drop a whole shard
            pin_memory=loader.pin_memory,
        )

    def all_finite(self, loss: torch.Tensor) -> bool:
        """Whether the loss is finite on every rank (all ranks must agree to stop, or the others would hang)."""
        finite = bool(torch.isfinite(loss))
        if not self.enabled:
            return finite
        flag = torch.tensor([0.0 if finite else 1.0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.SUM)
        return float(flag) == 0.0

    def sync_buffers(self, net: nn.Module) -> None:
        """Copy rank 0's buffers (BatchNorm running statistics) to all ranks after an epoch.

        Each rank updated them from its own shard in the last step; syncing keeps all ranks' models identical, so
        they compute the same validation metric and take the same early-stopping decision.
        """
        if self.enabled:
            for buffer in net.buffers():
                dist.broadcast(buffer, src=0)

    def concat(self, rows: np.ndarray) -> np.ndarray:
        """All ranks' rows (e.g. training predictions), concatenated in rank order."""
        return rows if not self.enabled else np.concatenate(self.gather(rows))

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (any picklable object), in rank order, on every rank."""
        if not self.enabled:
            return [value]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def barrier(self) -> None:
        """Wait until every rank gets here (e.g. until all have written their shards of the feature cache)."""
        if self.enabled:
            dist.barrier()

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (e.g. a run name containing the time)."""
        if not self.enabled:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def sum(self, *values: float) -> list[float]:
        """Element-wise sum over ranks (e.g. loss × count and count, for an exact mean)."""
        if not self.enabled:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor.tolist()

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def same_on_every_rank(distributed: Distributed, items: list[str], what: str) -> None:
    """Stop every rank with the same one line when the ranks hold different ``items`` (DATA's file list, the
    images' content hashes): work split by position or by hash would otherwise miss images or mix them up."""
    if not distributed.enabled:
        return
    fingerprint = hashlib.sha256("\n".join(items).encode("utf-8", "surrogateescape")).hexdigest()
    seen_by = distributed.gather((len(items), fingerprint))
    if len({fingerprint for _, fingerprint in seen_by}) > 1:
        counts = ", ".join(f"rank {rank}: {count}" for rank, (count, _) in enumerate(seen_by))
        raise TransferlabError(
            f"the ranks see different {what} ({counts}): every rank must read the same DATA (a shared or identical "
            "copy on every machine)"
        )


def from_environment(device_type: str = "cpu") -> Distributed:
    """Join the torchrun job described by the environment, or return a single-process context.

    ``device_type`` is where the engine trains: ``cpu`` uses gloo (threads split between the local processes),
    ``cuda`` uses nccl with one GPU per local rank (``device`` is ``cuda:LOCAL_RANK``).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device_type == "cuda":
        backend, device = "nccl", torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        backend, device = "gloo", torch.device("cpu")
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", world_size))))
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=timedelta(minutes=30))
    return Distributed(rank, world_size, local_rank, backend, device)
