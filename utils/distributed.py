"""Rank and world helpers. The same code runs under torchrun (nccl on CUDA, gloo on CPU)
and as a plain `python main.py` (world size 1, no process group needed)."""
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Optional

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_primary(self) -> bool:
        return self.rank == 0

    @property
    def device_id(self) -> Optional[int]:
        """The CUDA device index for DALI, None on CPU."""
        return self.device.index if self.device.type == "cuda" else None


def init_distributed() -> DistInfo:
    """Join the process group torchrun describes in the environment (if any)."""
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    if world_size > 1 and not dist.is_initialized():
        kwargs = {"device_id": device} if backend == "nccl" else {}
        store = _restart_scoped_store(rank, world_size)
        if store is not None:
            kwargs.update(store=store, rank=rank, world_size=world_size)
        dist.init_process_group(backend=backend, **kwargs)
    return DistInfo(rank, world_size, local_rank, device)


def _restart_scoped_store(rank: int, world_size: int) -> Optional[dist.Store]:
    """Under torchrun, its store with every key prefixed by the restart round; None
    elsewhere (init_process_group then reads the environment itself).

    torchrun keeps one store across elastic restarts (``--max-restarts``), and the process
    group finds its peers through keys in it: unprefixed, the restarted group reads the
    addresses the failed group published and cannot connect ("Connection refused")."""
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if restart is None or "MASTER_ADDR" not in os.environ:
        return None
    served_by_agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size,
                          is_master=rank == 0 and not served_by_agent, timeout=timedelta(minutes=30),
                          multi_tenant=True)
    return dist.PrefixStore(f"restart_{restart}/", store)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_primary() -> bool:
    return not is_distributed() or dist.get_rank() == 0


def all_reduce_(tensor: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
    """In-place all-reduce; a no-op in a single process."""
    if is_distributed():
        dist.all_reduce(tensor, op=op)
    return tensor


def broadcast_buffers_(module: torch.nn.Module, src: int = 0) -> None:
    """Give every rank rank `src`'s buffers (BatchNorm running statistics), so that all
    ranks validate, and resume, with the weights the checkpoint holds."""
    if is_distributed():
        for buf in module.buffers():
            dist.broadcast(buf, src)


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
