"""Copy a finished comparison folder into the repository, keeping what ``gridflex report`` reads.

    python bench/headline_copy.py runs/headline/ieee13_small docs/headline/ieee13_small

Kept: ``comparison.json``, ``command.txt``, and per run ``metrics.json`` and ``history.csv``;
``schedules.npz`` (the test days' voltages and the feeder-map arrays) of each learner's first
run only, since the report draws maps and heatmaps from the first run that has one, without
the injection arrays (``load_scale``, ``p_kw``, ``q_kvar``: the report does not read them). Left
behind: policies and checkpoints (megabytes per run; ``gridflex run`` with the recorded command
and seed reproduces them) and the other seeds' schedules. The copy is therefore enough to
rebuild the report, not to ``gridflex verify`` or export every run.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np

PER_RUN = ("metrics.json", "history.csv")
NOT_REPORTED = ("load_scale", "p_kw", "q_kvar")  # schedules.npz arrays gridflex report does not read


def copy_schedules(source: Path, target: Path) -> Path:
    """``schedules.npz`` without :data:`NOT_REPORTED` (compressed as gridflex writes it)."""
    with np.load(source, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if k not in NOT_REPORTED}
    np.savez_compressed(target, **arrays)
    return target


def copy_comparison(source: Path, target: Path) -> list[Path]:
    """Copy ``source`` (a ``gridflex compare`` folder) to ``target``; return the files written."""
    doc = json.loads((source / "comparison.json").read_text())
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for name in ("comparison.json", "command.txt"):
        if (source / name).is_file():
            written.append(Path(shutil.copy2(source / name, target / name)))
    for learner, entry in doc["learners"].items():
        for index, run in enumerate(entry["runs"]):
            if run.get("reused_from"):
                continue
            seed = run["seeds"][0]
            run_src, run_dst = source / learner / f"seed{seed}", target / learner / f"seed{seed}"
            run_dst.mkdir(parents=True, exist_ok=True)
            for name in PER_RUN:
                if (run_src / name).is_file():
                    written.append(Path(shutil.copy2(run_src / name, run_dst / name)))
            if index == 0 and (run_src / "schedules.npz").is_file():
                written.append(copy_schedules(run_src / "schedules.npz", run_dst / "schedules.npz"))
    return written


if __name__ == "__main__":
    files = copy_comparison(Path(sys.argv[1]), Path(sys.argv[2]))
    size = sum(f.stat().st_size for f in files)
    print(f"copied {len(files)} files, {size / 1e6:.1f} MB, to {sys.argv[2]}")
