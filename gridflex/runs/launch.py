"""``gridflex run`` under ``torchrun``: agents sharded over processes (docs/distributed.md).

``torchrun --nproc-per-node W -m gridflex run SCENARIO ...`` starts ``W`` processes with the
launcher's environment variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``). gridflex detects them (:func:`torchrun_world_size`): with ``WORLD_SIZE > 1``
the run is sharded (:func:`start`), with ``WORLD_SIZE`` 1 or unset it is the ordinary
single-process run. No flag is needed; every command but ``run`` refuses several processes.

What :func:`start` does, in order, on every rank:

1. Ranks other than 0 stop printing (stdout and stderr go to ``os.devnull``; a crash's traceback
   still reaches the real stderr, :func:`error_stream`): rank 0 speaks for the run.
2. Refusals, identical on every rank, each a :class:`UserError` (exit 2, one paragraph): a learner
   that cannot be sharded (``shards_agents`` false: e.g. ``ippo``, the centralised ``reference``),
   a device group with fewer agents than processes, a device named ``cuda:N`` (each rank takes
   ``cuda:LOCAL_RANK``).
3. The device: ``cpu`` (or ``auto`` without CUDA) runs on CPU with the gloo backend; ``cuda``
   (or ``auto`` with CUDA) on ``cuda:LOCAL_RANK`` with NCCL.
4. ``torch.distributed.init_process_group`` from the launcher's variables.

:func:`shard_world` then gives the world's environments this rank's agents
(:func:`gridflex.learning.distributed.shard_environment`).
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from typing import TextIO

import torch
import torch.distributed as dist

from gridflex.errors import UserError
from gridflex.learning.distributed import Ranks, shard_environment
from gridflex.runs.world import World
from gridflex.scenario import LoadedScenario

_REAL_STDERR: list[TextIO] = []  # the stderr a quieted rank keeps for tracebacks


def _int_env(name: str, default: int | None = None) -> int:
    value = os.environ.get(name)
    if value is None and default is not None:
        return default
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise UserError(f"environment variable {name}={value!r} is not an integer; gridflex reads "
                        "RANK, WORLD_SIZE and LOCAL_RANK as torchrun sets them (docs/distributed.md)") from None


def torchrun_world_size() -> int:
    """``WORLD_SIZE`` set by torchrun (1 when unset: one process)."""
    return _int_env("WORLD_SIZE", 1)


def refuse_other_commands(command: str) -> None:
    """Every command but ``run`` refuses to run in several processes (they would race on files)."""
    if torchrun_world_size() > 1 and command != "run":
        raise UserError(f"`gridflex {command}` was started in {torchrun_world_size()} processes "
                        "(WORLD_SIZE, e.g. by torchrun); only `gridflex run` shards agents over "
                        f"processes. Start `gridflex {command}` as one ordinary process "
                        "(docs/distributed.md)")


def error_stream() -> TextIO:
    """Where tracebacks go: the real stderr, also on a quieted rank."""
    return _REAL_STDERR[0] if _REAL_STDERR else sys.stderr


def quieted() -> bool:
    """Whether this process is a rank other than 0 that does not print."""
    return bool(_REAL_STDERR)


def _quiet() -> None:
    _REAL_STDERR.append(sys.stderr)
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the process's lifetime
    sys.stderr = sys.stdout


def check_shardable(loaded: LoadedScenario, registry, world_size: int) -> None:
    """The refusals of the module docstring (step 2) for ``world_size`` processes."""
    cfg = loaded.config
    how = ("; run it as one process (plain `gridflex run`), or choose a learner that can: gradmap, "
           "gradmap_e1, ssl_penalty, ssl_pd (docs/distributed.md)")
    if cfg.learner is not None:
        cls = registry.get("learner", cfg.learner.type)
        if not getattr(cls, "shards_agents", False):
            raise UserError(f"learner {cfg.learner.type!r} cannot shard its agents over {world_size} "
                            f"processes (it does not declare shards_agents: it keeps state over all "
                            f"agents, as IPPO's critics or the centralised reference's plan do){how}")
    small = [f"devices[{i}] ({group.count} x {group.type})" for i, group in enumerate(cfg.devices)
             if group.count < world_size]
    if small:
        most = min(g.count for g in cfg.devices)
        groups = " and ".join([", ".join(small[:-1]), small[-1]] if len(small) > 1 else small)
        raise UserError(f"{world_size} processes but {groups} {'has' if len(small) == 1 else 'have'} fewer "
                        "agents than processes: "
                        "every process owns a contiguous block of at least one agent of every device "
                        f"group. Start at most {most} process{'es' if most > 1 else ''} (torchrun "
                        "--nproc-per-node x --nnodes) for this scenario")
    if cfg.device.startswith("cuda:"):
        raise UserError(f"device {cfg.device!r} names one GPU, but {world_size} processes each need "
                        "their own: use device cuda (or auto); process LOCAL_RANK r then runs on "
                        "cuda:r (docs/distributed.md)")


def start(loaded: LoadedScenario, registry) -> Ranks | None:
    """``None`` unless started by torchrun with ``WORLD_SIZE > 1``; else the checks, the device
    and the process group of the module docstring, returning this process's :class:`Ranks`."""
    world_size = torchrun_world_size()
    if world_size <= 1:
        return None
    rank, local_rank = _int_env("RANK"), _int_env("LOCAL_RANK", 0)
    if rank != 0 and not _REAL_STDERR:
        _quiet()
    check_shardable(loaded, registry, world_size)
    want = loaded.config.device
    cuda = want == "cuda" or (want == "auto" and torch.cuda.is_available())
    if cuda:
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if local_rank >= count:
            message = (f"process LOCAL_RANK {local_rank} (RANK {rank}) needs cuda:{local_rank}, but its "
                       f"machine has {count} CUDA device(s): start at most {count} processes per machine "
                       "(torchrun --nproc-per-node), or use device cpu")
            print(f"gridflex (rank {rank}): error: {message}", file=error_stream())
            raise UserError(message)
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", rank=rank, world_size=world_size, device_id=device)
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo", rank=rank, world_size=world_size)
    return Ranks(rank, world_size, local_rank, "nccl" if cuda else "gloo", device)


def stop(ranks: Ranks | None) -> None:
    """Leave the process group (after a barrier, so no rank exits while others still gather)."""
    if ranks is not None and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def shard_world(world: World, ranks: Ranks) -> World:
    """``world`` whose environments step this rank's agents (one view when ``env is eval_env``)."""
    env = shard_environment(world.env, ranks)
    eval_env = env if world.eval_env is world.env else shard_environment(world.eval_env, ranks)
    return replace(world, env=env, eval_env=eval_env)
