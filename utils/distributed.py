"""Rank and world helpers. The same code runs under torchrun (nccl on CUDA, gloo on CPU),
under SLURM's srun without torchrun (one task per GPU), and as a plain `python main.py`
(world size 1, no process group needed)."""
import os
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Mapping, Optional

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


@dataclass(frozen=True)
class LaunchEnv:
    """Who launched this process and where it sits: rank, world size, rank on its node."""

    launcher: str  # "torchrun" (or any launcher setting RANK/WORLD_SIZE), "slurm", or "none"
    rank: int
    world_size: int
    local_rank: int
    master_addr: Optional[str] = None  # set for "slurm": where rank 0 listens
    master_port: Optional[int] = None


TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
# Step ids SLURM gives to what is not an srun step: the batch script, the extern and the
# interactive steps (0xfffffffa and above). The batch script sees SLURM_PROCID=0 and the
# allocation's SLURM_NTASKS; treating it as a rank would wait forever for the others.
_FIRST_SPECIAL_STEP = 0xFFFFFFFA
SLURM_PORT_BASE, SLURM_PORT_SPAN = 10000, 20000  # below Linux's ephemeral ports (32768+)


def _int_var(environ: Mapping[str, str], name: str, default: Optional[int] = None) -> int:
    value = environ.get(name)
    if value is None:
        if default is None:
            raise ValueError(f"environment variable {name} is not set")
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def slurm_first_host(nodelist: str) -> str:
    """The first host of a SLURM node list in its compressed form, e.g.
    'gpu[01-03,07],cpu5' -> 'gpu01', 'rack[2-3]-n[08-09]' -> 'rack2-n08' (what
    `scontrol show hostnames` prints first, without calling scontrol)."""
    text = nodelist.strip()
    host, i = [], 0
    while i < len(text):
        c = text[i]
        if c == "[":
            end = text.find("]", i)
            if end < 0:
                raise ValueError(f"SLURM node list {nodelist!r}: '[' without ']'")
            first = re.match(r"\s*([0-9A-Za-z]+)\s*(?:-\s*[0-9A-Za-z]+\s*)?(?:,|$)", text[i + 1 : end])
            if first is None:
                raise ValueError(f"SLURM node list {nodelist!r}: cannot read the range {text[i:end + 1]!r}")
            host.append(first.group(1))
            i = end + 1
            continue
        if c == "]":
            raise ValueError(f"SLURM node list {nodelist!r}: ']' without '['")
        if c == ",":
            break
        host.append(c)
        i += 1
    name = "".join(host).strip()
    if not name:
        raise ValueError(f"SLURM node list {nodelist!r}: no host name")
    return name


def slurm_master_port(job_id: int) -> int:
    """A port derived from the job id: the same in every task of the job, and different
    for jobs that share a node (unless their ids are SLURM_PORT_SPAN apart)."""
    return SLURM_PORT_BASE + job_id % SLURM_PORT_SPAN


def launch_env(environ: Mapping[str, str]) -> LaunchEnv:
    """Read the launcher's environment. torchrun's variables win over SLURM's; SLURM's
    are used only inside an srun step (not in the batch script itself)."""
    if any(name in environ for name in TORCHRUN_VARS):
        env = LaunchEnv("torchrun", _int_var(environ, "RANK", 0), _int_var(environ, "WORLD_SIZE", 1),
                        _int_var(environ, "LOCAL_RANK", 0))
    elif "SLURM_PROCID" in environ and "SLURM_NTASKS" in environ and _in_srun_step(environ):
        nodelist = next((environ[k] for k in ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST")
                         if environ.get(k)), None)
        addr = environ.get("MASTER_ADDR") or (slurm_first_host(nodelist) if nodelist else None)
        if addr is None:
            raise ValueError("SLURM launch: no MASTER_ADDR and no SLURM_JOB_NODELIST to take rank 0's host from")
        if environ.get("MASTER_PORT"):
            port = _int_var(environ, "MASTER_PORT")
        else:
            port = slurm_master_port(_int_var(environ, "SLURM_JOB_ID", 0))
        env = LaunchEnv("slurm", _int_var(environ, "SLURM_PROCID"), _int_var(environ, "SLURM_NTASKS"),
                        _int_var(environ, "SLURM_LOCALID", 0), addr, port)
    else:
        return LaunchEnv("none", 0, 1, 0)
    if env.world_size < 1 or not 0 <= env.rank < env.world_size or env.local_rank < 0:
        raise ValueError(f"{env.launcher} launch: rank {env.rank}, local rank {env.local_rank}, "
                         f"world size {env.world_size} are inconsistent")
    return env


def _in_srun_step(environ: Mapping[str, str]) -> bool:
    step = environ.get("SLURM_STEP_ID", environ.get("SLURM_STEPID"))
    return step is not None and step.strip().isdigit() and int(step) < _FIRST_SPECIAL_STEP


def _cuda_index(local_rank: int) -> int:
    """The GPU of this rank: LOCAL_RANK among the visible GPUs, or the only visible one
    (srun --gpus-per-task=1 shows each task just its own GPU)."""
    count = torch.cuda.device_count()
    if count == 1:
        return 0
    if local_rank >= count:
        raise ValueError(f"local rank {local_rank} but only {count} GPUs are visible to this process")
    return local_rank


def init_distributed() -> DistInfo:
    """Join the process group torchrun or srun describes in the environment (if any).

    Under srun, RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT are set from
    SLURM's variables (launch_env), so that everything downstream sees torchrun's view.
    """
    env = launch_env(os.environ)
    if env.launcher == "slurm":
        os.environ.update(RANK=str(env.rank), WORLD_SIZE=str(env.world_size), LOCAL_RANK=str(env.local_rank),
                          MASTER_ADDR=env.master_addr, MASTER_PORT=str(env.master_port))
    if torch.cuda.is_available():
        device = torch.device("cuda", _cuda_index(env.local_rank))
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    if env.world_size > 1 and not dist.is_initialized():
        kwargs = {"device_id": device} if backend == "nccl" else {}
        store = _restart_scoped_store(env.rank, env.world_size)
        if store is not None:
            kwargs.update(store=store, rank=env.rank, world_size=env.world_size)
        dist.init_process_group(backend=backend, **kwargs)
    return DistInfo(env.rank, env.world_size, env.local_rank, device)


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


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
