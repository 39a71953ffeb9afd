"""The collectives dynunc uses, each a no-op in a single process (no process group, or a
group of one): the training wing's recorder and pruner call them the same way under
torchrun, srun, Lightning or accelerate, whoever initialised torch.distributed.
Joining a process group is the launcher's business (the research layout's
utils/distributed.py, or the user's framework)."""
from typing import Optional

import torch
import torch.distributed as dist


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


def first_error(error: Optional[str]) -> Optional[str]:
    """The error of the lowest rank that has one (None: this rank has none), the same on
    every rank, so that all stop together and one of them can say why."""
    if not is_distributed():
        return error
    errors = [None] * dist.get_world_size()
    dist.all_gather_object(errors, error)
    return next((e for e in errors if e is not None), None)


def barrier() -> None:
    if is_distributed():
        dist.barrier()
