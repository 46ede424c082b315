"""The miniature base's recipe (`python -m experiments.pretrain`): an interrupted run resumes exactly."""

from __future__ import annotations

import os
import re
import signal

import pytest

import experiments.pretrain as pretrain


@pytest.mark.slow
def test_pretraining_resumes_exactly(tmp_path, monkeypatch):
    """Alignment (2 steps), four corpus steps and two focus steps straight, vs the same stopped by SIGTERM at
    corpus step 2 (the preemption path: save, stop) and rerun: the same weights, byte for byte."""
    small = [
        "--set",
        "model=tiny",
        "--set",
        "steps=4",
        "--set",
        "batch_size=2",
        "--set",
        "save_every=3",
        "--set",
        "probe_every=2",
        "--set",
        "probe_studies=2",
        "--set",
        "tokenizer_studies=12",
        "--set",
        "probe_max_new_tokens=4",
        "--set",
        "optim.total_steps=4",
        "--set",
        "optim.warmup_steps=1",
        "--set",
        "align_steps=2",
        "--set",
        "align_batch_size=2",
        "--set",
        "align_optim.total_steps=2",
        "--set",
        "align_probe_studies=4",
        "--set",
        "readout_len=72",
        "--set",
        "focus_steps=2",
    ]

    def run(name):
        return pretrain.main(["--run-dir", str(tmp_path / name), "--out", str(tmp_path / name / "out"), *small])

    assert run("straight") == 0
    real_probe = pretrain.probe

    def probe_then_preempt(*args, **kw):
        out = real_probe(*args, **kw)
        os.kill(os.getpid(), signal.SIGTERM)  # what a preempted TPU VM or `kill` sends
        return out

    monkeypatch.setattr(pretrain, "probe", probe_then_preempt)
    with pytest.raises(SystemExit, match="stopped by signal at step 2"):
        run("resumed")
    monkeypatch.setattr(pretrain, "probe", real_probe)
    assert run("resumed") == 0
    a = (tmp_path / "straight" / "out" / "model.safetensors").read_bytes()
    b = (tmp_path / "resumed" / "out" / "model.safetensors").read_bytes()
    assert a == b
    probes = (tmp_path / "resumed" / "probe.jsonl").read_text().splitlines()
    steps = [int(re.search(r'"step": (\d+)', p).group(1)) for p in probes]
    assert steps == [2, 4, 6]  # focus steps count on from the corpus stage's
