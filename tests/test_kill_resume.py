"""Kill a tiny run at every phase boundary and inside every phase (SIGKILL: no handler runs), rerun
it each time, and check what a scheduler's restart relies on (tests/kill_run.py is the run)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

KILL_RUN = Path(__file__).parent / "kill_run.py"

# In run order: each rerun resumes from the previous kill and must get as far as the next point.
# SIGKILL runs no handler; the one SIGTERM checks the CLI's stop path (message, status 143).
CHAIN = (
    "eval:0",          # the initial evaluation, before any state existed
    "warmup-step",     # inside the warm-up
    "saved:warmup",    # warm-up checkpoint in place, state not yet written
    "eval:warmup",     # the warm-up's evaluation
    "term:grpo-step",  # SIGTERM inside GRPO
    "save:last",       # writing the GRPO checkpoint (its .tmp half written)
    "saved:last",      # GRPO checkpoint in place, state not yet written
    "ofsd-step",       # inside OFSD
    "saved:round_1",   # round checkpoint in place, state not yet written, checkpoints/last still there
    "eval:1",          # the end-of-round evaluation
)


def run(work: Path, point: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(KILL_RUN), str(work), *([point] if point else [])],
                          capture_output=True, text=True, timeout=600)


def steps_by_tag(run_dir: Path) -> dict[str, list[int]]:
    """Every scalar tag's steps in the order the event files were written (one file per process)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[int]] = {}
    files = sorted((run_dir / "tensorboard").rglob("events.out.tfevents.*"), key=lambda f: int(f.name.split(".")[3]))
    for events in files:
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend(e.step for e in acc.Scalars(tag))
    return out


def check_state_names_a_checkpoint(run_dir: Path) -> dict:
    state = json.loads((run_dir / "evolver_state.json").read_text())
    if "checkpoint" in state:
        assert (run_dir / "checkpoints" / state["checkpoint"] / "model.safetensors").is_file(), state
    return state


@pytest.mark.slow
def test_killed_at_every_point_then_rerun_finishes_with_every_round_once(tmp_path):
    run_dir = tmp_path / "run"
    for point in CHAIN:
        proc = run(tmp_path, point)
        if point.startswith("term:"):
            assert proc.returncode == 143, (point, proc.returncode, proc.stderr[-3000:])
            assert "stopped by SIGTERM" in proc.stderr and "run the same command to resume" in proc.stderr
        else:
            assert proc.returncode == -9, (point, proc.returncode, proc.stderr[-3000:])
        assert (tmp_path / "killed_at").read_text() == point.removeprefix("term:")  # got past the last kill
        check_state_names_a_checkpoint(run_dir)
    proc = run(tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = check_state_names_a_checkpoint(run_dir)
    assert state["round"] == 3 and state["checkpoint"] == "round_2" and state["warmup"] == "done"
    assert "started" not in state and "pending_eval" not in state
    with (run_dir / "val_table.csv").open() as f:
        assert [row["round"] for row in csv.DictReader(f)] == ["0", "warmup", "1", "2"]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["round_1", "round_2", "warmup"]
    # the optimisers' states live in the newest checkpoint only, one per round kind
    assert sorted(p.name for p in (run_dir / "checkpoints" / "round_2" / "optimizer").iterdir()) == ["grpo", "ofsd"]
    assert not (run_dir / "checkpoints" / "round_1" / "optimizer").exists()
    tags = steps_by_tag(run_dir)
    assert {"warmup/loss", "grpo/reward_mean", "ofsd/distill_loss", "val/em"} <= set(tags)
    for tag, steps in tags.items():
        assert all(a < b for a, b in zip(steps, steps[1:], strict=False)), (tag, steps)
    assert len(tags["val/em"]) <= 4  # never twice for one round (a killed evaluation logs nothing)
