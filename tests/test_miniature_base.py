"""The shipped miniature base (models/miniature_base): a real Hugging Face Qwen2.5-VL folder that transformers
opens with the same logits, that reads the image on held-out pretraining-style prompts, and whose recipe
(`python -m experiments.pretrain`) resumes an interrupted run exactly."""
from __future__ import annotations

import hashlib
import os
import re
import signal
from pathlib import Path

import numpy as np
import pytest

from experiments.configs import MINIATURE_BASE

BASE = Path(MINIATURE_BASE)
# Held-out probe floor, from the shipped base's curve (models/miniature_base/README.md, RESULTS.md): presence
# accuracy with real images minus images swapped between prompts.
MIN_PRESENCE_GAP = 0.15


def test_base_folder_is_complete_and_its_card_hashes_match():
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "README.md"):
        assert (BASE / name).is_file(), name
    assert sum(p.stat().st_size for p in BASE.iterdir()) < 40e6
    card = (BASE / "README.md").read_text()
    for name in ("model.safetensors", "config.json", "tokenizer.json"):
        digest = hashlib.sha256((BASE / name).read_bytes()).hexdigest()
        assert re.search(rf"`{re.escape(name)}` {digest}", card), f"{name}: card sha256 is stale"


def test_base_opens_in_transformers_with_equal_logits():
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    from dmx_jax.hf import load_pretrained
    model, cfg = load_pretrained(BASE)
    hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(BASE).eval()
    ids = np.array([[cfg.bos_token_id, 300, 301, 302, 900, 1500]], np.int32)
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(ids, dtype=torch.long)).logits.numpy()
    np.testing.assert_allclose(np.asarray(model(ids)), ref, atol=1e-4)


def test_base_reads_the_image_on_held_out_studies():
    """Presence questions on held-out probe studies: accuracy with each prompt's own image is well above the
    accuracy with another prompt's image (a broken vision path, merge or position layout loses the gap)."""
    from flax import nnx

    from data_pipelines.tokenizer import HFTokenizer
    from dmx_jax.hf import load_pretrained
    from experiments.pretrain import PretrainConfig, probe, probe_groups
    model, mcfg = load_pretrained(BASE)
    tok = HFTokenizer.from_file(BASE / "tokenizer.json")
    graphdef, state = nnx.split(model)
    groups = probe_groups(PretrainConfig(probe_studies=48), tok, mcfg)
    p = probe(graphdef, nnx.to_pure_dict(state), groups, tok)
    gap = p["presence_acc"] - p["presence_acc_swapped"]
    assert gap >= MIN_PRESENCE_GAP, p
    assert p["detect_miou"] > p["detect_miou_swapped"], p


@pytest.mark.slow
def test_pretraining_resumes_exactly(tmp_path, monkeypatch):
    """Four steps straight vs two steps, SIGTERM (the preemption path: save, stop), rerun: same weights."""
    import experiments.pretrain as pretrain
    small = ["--set", "model=tiny", "--set", "steps=4", "--set", "batch_size=2", "--set", "save_every=3",
             "--set", "probe_every=2", "--set", "probe_studies=2", "--set", "tokenizer_studies=12",
             "--set", "probe_max_new_tokens=4", "--set", "optim.total_steps=4", "--set", "optim.warmup_steps=1"]

    def run(name):
        return pretrain.main(["--run-dir", str(tmp_path / name), "--out", str(tmp_path / name / "out"), *small])

    assert run("straight") == 0
    real_probe = pretrain.probe

    def probe_then_preempt(*args, **kw):
        out = real_probe(*args, **kw)
        os.kill(os.getpid(), signal.SIGTERM)          # what a preempted TPU VM or `kill` sends
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
    assert [int(re.search(r'"step": (\d+)', p).group(1)) for p in probes] == [2, 4]
