"""One execution of a scenario: build everything it names, then (with a learner) train and evaluate."""

from __future__ import annotations

import time
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any

import torch
import yaml

from gridflex.errors import UserError
from gridflex.scenario import LoadedScenario


def resolve_device(requested: str) -> torch.device:
    """``"cpu"``, ``"cuda"`` (must exist) or ``"auto"`` -> a torch device."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(
            f"device {requested!r} requested but CUDA is not available on this machine; use "
            "device: cpu (or auto) in the scenario, or --device cpu"
        )
    return torch.device(requested)


@dataclass
class RunPlan:
    """Everything a scenario names, built and checked, with a human-readable description."""

    loaded: LoadedScenario
    device: torch.device
    grid: Any
    solver: Any
    base_case: Any
    lines: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return "\n".join(self.lines)

    def write(self, out_dir: Path) -> list[Path]:
        """Write the resolved scenario and the plan into ``out_dir`` (created if needed)."""
        out_dir.mkdir(parents=True, exist_ok=True)
        resolved = out_dir / "scenario.resolved.yaml"
        resolved.write_text(
            yaml.safe_dump(self.loaded.config.model_dump(mode="json"), sort_keys=False)
        )
        plan = out_dir / "plan.txt"
        plan.write_text(self.describe() + "\n")
        return [resolved, plan]


def plan_run(loaded: LoadedScenario, registry: Any, pm: Any = None) -> RunPlan:
    """Build the feeder, grid and solver of a scenario and solve its base case."""
    from gridflex.feeder_cache import load_feeder
    from gridflex.grid_build import build_grid

    cfg = loaded.config
    device = resolve_device(cfg.device)
    t0 = time.perf_counter()
    feeder = load_feeder(loaded.feeder_path(), taps=cfg.feeder.taps, registry_or_pm=pm)
    grid = build_grid(feeder).with_load_model(cfg.feeder.load_model)
    solver_cls = registry.get("solver", cfg.solver.type)
    solver = solver_cls(grid, loaded.component_config("solver"), device=device)
    load_scale = torch.full((grid_load_count(grid),), cfg.feeder.load_mult, dtype=torch.float64)
    base = solver.solve(load_scale=load_scale.to(device))
    elapsed = time.perf_counter() - t0

    lines = [
        f"scenario   {cfg.name}  ({loaded.source})",
        f"sha256     {loaded.sha256()}",
        f"device     {device}, {cfg.dtype}",
        f"feeder     {loaded.feeder_path()}  (taps: {cfg.feeder.taps}, "
        f"loads: {cfg.feeder.load_model}, load_mult {cfg.feeder.load_mult})",
        f"grid       {grid.n_nodes} nodes, {len(grid.branches)} branches, "
        f"{len(grid.load_elements)} loads",
        f"solver     {cfg.solver.type} {loaded.component_config('solver').model_dump()}",
        "base case  converged={} iterations={} source {:.1f} kW {:.1f} kvar, losses {:.2f} kW, "
        "|V| {:.4f}-{:.4f} pu  ({:.2f} s incl. build)".format(
            bool(base.converged.all()),
            int(base.iterations.max()),
            float(base.source_power_kw),
            float(base.source_power_kvar),
            float(base.losses_kw),
            float(base.vm_pu.min()),
            float(base.vm_pu.max()),
            elapsed,
        ),
    ]
    for i, group in enumerate(cfg.devices):
        lines.append(f"devices[{i}] {group.count} x {group.type} {group.params}")
    if not cfg.devices:
        lines.append("devices    none")
    if cfg.learner is None:
        lines.append("learner    none configured: stopping after the plan")
    else:
        lines.append(f"learner    {cfg.learner.type} {cfg.learner.params}")
    return RunPlan(loaded, device, grid, solver, base, lines)


def grid_load_count(grid: Any) -> int:
    return len(grid.load_elements)
