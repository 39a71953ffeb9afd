"""utils/distributed.py: the launcher's environment (torchrun, SLURM's srun, none) mapped
to rank / world size / local rank, on CPU."""
import os
import socket
import subprocess
import sys

import pytest

from utils.distributed import LaunchEnv, launch_env, slurm_first_host, slurm_master_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def srun_env(procid, ntasks, localid, nodelist="gpu[01-02]", job_id="4242", step="0", **extra):
    """What srun puts in a task's environment (the variables we read)."""
    env = {"SLURM_PROCID": str(procid), "SLURM_NTASKS": str(ntasks), "SLURM_LOCALID": str(localid),
           "SLURM_JOB_NODELIST": nodelist, "SLURM_JOB_ID": job_id, "SLURM_STEP_ID": step}
    env.update(extra)
    return env


@pytest.mark.parametrize("nodelist, first", [
    ("gpu01", "gpu01"),
    ("gpu[01-03,07],cpu5", "gpu01"),
    ("gpu[07,01-03]", "gpu07"),
    ("cpu5,gpu[01-03]", "cpu5"),
    ("node[008-010]", "node008"),
    ("rack[2-3]-n[08-09],x1", "rack2-n08"),
    ("a-b.c[1]", "a-b.c1"),
    (" n[3] ", "n3"),
])
def test_first_host(nodelist, first):
    assert slurm_first_host(nodelist) == first


@pytest.mark.parametrize("bad", ["", "gpu[01-03", "gpu]01[", "[]", ",gpu1", "gpu[-]"])
def test_first_host_refuses_malformed_lists(bad):
    with pytest.raises(ValueError, match="SLURM node list"):
        slurm_first_host(bad)


def test_srun_tasks_map_like_torchrun():
    # 2 nodes x 4 GPUs, one task per GPU: SLURM numbers tasks node by node, as torchrun does.
    for procid in range(8):
        env = launch_env(srun_env(procid, 8, procid % 4))
        assert env == LaunchEnv("slurm", procid, 8, procid % 4, "gpu01", slurm_master_port(4242))
    assert 10000 <= slurm_master_port(4242) < 30000
    assert slurm_master_port(4242) == slurm_master_port(4242) != slurm_master_port(4243)


def test_master_address_and_port_from_the_environment_win():
    env = launch_env(srun_env(1, 2, 1, MASTER_ADDR="10.0.0.5", MASTER_PORT="29500"))
    assert (env.master_addr, env.master_port) == ("10.0.0.5", 29500)
    env = launch_env(srun_env(1, 2, 1, nodelist="x[1-2]", SLURM_STEP_NODELIST="y[5-6]"))
    assert env.master_addr == "y5"  # the step's nodes (srun -w) before the job's


def test_torchrun_variables_win_over_slurm():
    env = launch_env({**srun_env(3, 8, 3), "RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    assert env == LaunchEnv("torchrun", 1, 2, 1)


def test_plain_process_and_the_batch_script_are_single_process():
    assert launch_env({}) == LaunchEnv("none", 0, 1, 0)
    # The batch script itself: SLURM_PROCID=0 and the allocation's task count, no srun step.
    batch = srun_env(0, 8, 0)
    del batch["SLURM_STEP_ID"]
    assert launch_env(batch) == LaunchEnv("none", 0, 1, 0)
    assert launch_env(srun_env(0, 8, 0, step=str(0xFFFFFFFE))).launcher == "none"  # batch step id
    assert launch_env({**batch, "SLURM_STEPID": "3"}).launcher == "slurm"  # the old name of the step id


@pytest.mark.parametrize("env, message", [
    (srun_env(8, 8, 0), "inconsistent"),
    (srun_env("x", 8, 0), "SLURM_PROCID='x'"),
    ({"RANK": "2", "WORLD_SIZE": "2"}, "inconsistent"),
    ({k: v for k, v in srun_env(0, 2, 0).items() if k != "SLURM_JOB_NODELIST"}, "MASTER_ADDR"),
])
def test_bad_environment_is_named(env, message):
    with pytest.raises(ValueError, match=message):
        launch_env(env)


WORKER = """
import torch, torch.distributed as dist
from utils.distributed import init_distributed
info = init_distributed()
t = torch.tensor([info.rank + 1.0])
dist.all_reduce(t)
print(info.rank, info.world_size, info.local_rank, int(t.item()), flush=True)
dist.destroy_process_group()
"""


def test_two_srun_tasks_form_a_process_group_without_torchrun():
    with socket.socket() as s:  # a free port, given as the job id's port would be
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                              "MASTER_PORT") and not k.startswith("SLURM_")}
    procs = [
        subprocess.Popen([sys.executable, "-c", WORKER], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env={**base, **srun_env(r, 2, r, nodelist="localhost", MASTER_PORT=str(port)),
                                         "CUDA_VISIBLE_DEVICES": ""})
        for r in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    assert sorted(out.split() for out, _ in outs) == [["0", "2", "0", "3"], ["1", "2", "1", "3"]]
