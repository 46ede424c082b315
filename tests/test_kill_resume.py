"""SIGKILL mid-run + restart reproduces the uninterrupted losses exactly; SIGTERM saves before exiting."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.processes import run_workers

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests/helpers/resume_worker.py"


def _losses(run_dir):
    recs = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in recs}


def _start(run_dir, steps, sleep):
    return subprocess.Popen(
        [sys.executable, str(WORKER), str(run_dir), str(steps), str(sleep)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for_step(run_dir, step, proc, timeout=120):
    t0 = time.time()
    while time.time() - t0 < timeout:
        path = Path(run_dir) / "metrics.jsonl"
        if path.exists() and any(json.loads(x)["step"] >= step for x in path.read_text().splitlines() if x):
            return
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        time.sleep(0.05)
    raise TimeoutError(f"step {step} never logged")


def test_sigkill_then_resume_is_exact_and_sigterm_saves(tmp_path):
    ref_dir, kill_dir, term_dir = tmp_path / "ref", tmp_path / "kill", tmp_path / "term"
    ref = _start(ref_dir, 8, 0.0)
    killed = _start(kill_dir, 8, 0.5)
    _wait_for_step(kill_dir, 5, killed)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert ref.wait(timeout=180) == 0, ref.communicate()[0][-3000:]
    steps_before = sorted(int(p.name) for p in (kill_dir / "ckpt").iterdir() if p.name.isdigit())
    assert steps_before and max(steps_before) < 8
    resumed = _start(kill_dir, 8, 0.0)
    out = resumed.communicate(timeout=180)[0]
    assert resumed.returncode == 0, out[-3000:]
    want, got = _losses(ref_dir), _losses(kill_dir)
    assert sorted(want) == list(range(1, 9))
    for step in range(1, 9):
        assert got[step] == want[step], (step, got[step], want[step])  # bit-exact, fixed seeds

    term = _start(term_dir, 50, 0.3)
    _wait_for_step(term_dir, 3, term)
    term.send_signal(signal.SIGTERM)
    assert term.wait(timeout=60) == 0
    last_logged = max(_losses(term_dir))
    saved = sorted(int(p.name) for p in (term_dir / "ckpt").iterdir() if p.name.isdigit())
    assert saved[-1] == last_logged and last_logged < 50


@pytest.mark.slow
def test_sigterm_on_one_host_stops_every_host_at_the_same_step(tmp_path):
    """Two processes; only process 1 is signalled. Both save the same step and stop; the rerun restores each
    process's own data-iterator state (not process 0's) and finishes."""
    run_workers("tests/helpers/preempt_worker.py", 2, tmp_path, timeout=300, extra=("cut",))
    cut = [json.loads((tmp_path / f"cut_{i}.json").read_text()) for i in range(2)]
    assert [c["preempted"] for c in cut] == [True, True]
    assert cut[0]["final_step"] == cut[1]["final_step"] == 2 and cut[0]["saved_steps"] == [2]
    run_workers("tests/helpers/preempt_worker.py", 2, tmp_path, timeout=300, extra=("resume",))
    resumed = [json.loads((tmp_path / f"resume_{i}.json").read_text()) for i in range(2)]
    assert [r["start"] for r in resumed] == [2, 2] and [r["final_step"] for r in resumed] == [6, 6]
    assert [r["restored"] for r in resumed] == [{"i": 2, "process": 0}, {"i": 2, "process": 1}]
