"""Progress output: bars on a terminal that keep their final figures, one line per step in logs."""

from __future__ import annotations

import io
import re

from gridflex.progress import Progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_log_lines_have_elapsed_time_and_a_closing_line():
    stream = io.StringIO()
    bar = Progress("training", 40, "s", stream=stream)
    bar.step(2.4, "validation 0.50 % violations")
    bar.step(4.4, "validation 0.30 % violations")
    bar.close("3 iterations")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3
    assert re.fullmatch(r"training: 2/40 s, validation 0\.50 % violations \(elapsed \d+\.\d s\)", lines[0])
    assert lines[2].startswith("training: done, 3 iterations (")


def test_terminal_bar_keeps_its_final_figures():
    stream = _Terminal()
    bar = Progress("training", 10, "it", stream=stream)
    bar.step(10, "validation 0.12 % violations")
    bar.close("10 iterations")
    text = stream.getvalue()
    last = text.replace("\r", "\n").strip().splitlines()[-1]
    assert "10/10 it" in last and "10 iterations" in last  # left on screen, not erased


def test_disabled_progress_writes_nothing():
    stream = io.StringIO()
    bar = Progress("training", 10, "it", stream=stream, enabled=False)
    bar.step(3, "x")
    bar.close("y")
    assert stream.getvalue() == ""


def test_run_reports_training_and_every_evaluation_in_a_log(tmp_path, cli):
    from test_gradmap import TINY

    scenario = tmp_path / "tiny13.yaml"
    scenario.write_text(TINY)
    code, out, err = cli("run", str(scenario), "--out", str(tmp_path / "run"))
    assert code == 0, err
    training = [line for line in err.splitlines() if line.startswith("training:")]
    assert len(training) >= 3 and all("elapsed" in line for line in training)  # one per validation point
    assert any(line.startswith("training: done") for line in training)
    for name in ("gradmap", "no_control", "rule_based", "droop"):
        assert re.search(rf"evaluating {name} on 1 test days .*: done, .* violations", err), name
