"""One fleet's device step as a single function, optionally compiled (``environment.compile``).

Per rollout step each fleet turns its policy outputs into feasible actions, steps its dynamics,
and reports its demand, cost and residuals: five device-model calls of small tensor operations,
24 steps x every fleet per day. On a GPU those operations are far too small to fill the device, so
the rollout is bound by kernel launches and Python (issue 20: the 1,000-agent rollout on an H100
barely slowed from 8 to 32 days). :func:`device_step` joins the five calls into one function of
tensors, and :func:`compiled_device_step` hands it to :func:`torch.compile`: on CPU the inductor
backend fuses the operations into a few C++ loops; on CUDA ``mode="reduce-overhead"`` also
records them as a CUDA graph, replayed with one launch. Shapes are static (``dynamic=False``):
the batch of days and the fleet size do not change within a run, and a new shape compiles once
more (validation batches, test days).

The compiled step computes the same function as the eager one (tests/test_compiled_step.py:
trajectories and gradients equal to 1e-10 in float64 on CPU). Compilation costs tens of seconds
per device type on first use, so it pays on long runs, not on short ones. :func:`compile_for` is the
one place that decides how (also for the policies' acting forward, :meth:`Environment.acting`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from gridflex.plugins.contracts import DeviceModel, StepInputs

#: compiled variants kept per step code object (all fleets share one; see compiled_device_step)
RECOMPILE_LIMIT = 64

#: (u [B, N, d], state [B, N, S], inputs) -> (action, next state, p_kw [B, N], q_kvar [B, N],
#: cost [B, N], residuals [B, N, r])
DeviceStep = Callable[[torch.Tensor, torch.Tensor, StepInputs], tuple[torch.Tensor, ...]]


def device_step(model: DeviceModel) -> DeviceStep:
    """The fleet's step as one function: action, dynamics, demand, cost, residuals."""

    def step(u: torch.Tensor, state: torch.Tensor, inputs: StepInputs) -> tuple[torch.Tensor, ...]:
        action = model.action(u, state, inputs)
        nxt = model.step(state, action, inputs)
        p_kw, q_kvar = model.demand(action, state)
        return (action, nxt, p_kw, q_kvar, model.cost(state, action, inputs),
                model.residuals(state, action, nxt, inputs))

    return step


def compiled_device_step(model: DeviceModel, device: torch.device) -> DeviceStep:
    """:func:`device_step` through :func:`torch.compile` (CUDA graphs on CUDA devices)."""
    return compile_for(device_step(model), device)


def compile_for(fn: Callable[..., tuple[torch.Tensor, ...] | torch.Tensor], device: torch.device):
    """``fn`` through :func:`torch.compile` for ``device``: inductor on CPU, CUDA graphs
    (``mode="reduce-overhead"``) on CUDA with the outputs copied out of the graph's pool.

    Used for the device steps and for the policies' acting forward (:meth:`Environment.acting`);
    static shapes, one compiled variant per input shape and grad mode."""
    mode = "reduce-overhead" if torch.device(device).type == "cuda" else None
    # every fleet's step shares one code object, and dynamo counts each (model, shape, grad mode)
    # against that code object's recompile limit (8 by default, then it silently runs eager):
    # three fleets x training, validation and test shapes x with and without autograd exceed it
    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, RECOMPILE_LIMIT)
    graph = torch.compile(fn, dynamic=False, mode=mode)
    if mode is None:
        return graph

    def replay(*args):
        # a CUDA graph's outputs live in its static pool and a later replay may overwrite them;
        # the rollout keeps every step's outputs for the whole day, so they are copied out
        out = graph(*args)
        return out.clone() if isinstance(out, torch.Tensor) else tuple(t.clone() for t in out)

    return replay
