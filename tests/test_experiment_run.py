"""`python -m experiments.run` end to end on a miniature config: every output, HF export, resume, bad config."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from flax import nnx

from data_pipelines.tokenizer import train_byte_level_bpe
from dmx_jax.hf import load_pretrained, save_pretrained
from dmx_jax.model import Qwen25VL, preset
from experiments import run
from experiments.datasets import with_tokenizer
from experiments.pretrain import PretrainConfig, tokenizer_corpus

MINI = [
    "--set",
    "model=tiny",
    "--set",
    "data.train_examples=48",
    "--set",
    "eval.examples=10",
    "--set",
    "eval.bootstrap=20",
    "--set",
    "sft.steps=3",
    "--set",
    "cold_start.steps=2",
    "--set",
    "rl.steps=2",
    "--set",
    "rl.prompts_per_step=2",
    "--set",
    "rl.algo.max_new_tokens=12",
    "--set",
    "eval.max_new_tokens=8",
    "--set",
    "eval.reasoning_max_new_tokens=12",
    "--set",
    "sft.save_every=2",
    "--set",
    "align.steps=2",
    "--set",
    "align.batch_size=8",
    "--set",
    "rl.eval_every=1",
    "--set",
    "rl.eval_prompts=3",
    "--set",
    "rl.algo.dynamic_sampling=true",
]


@pytest.mark.slow
def test_run_writes_everything_and_resumes(tmp_path, capsys):
    """The run directory is a store the run pushes to from a local working copy (--local-dir), the code path of a
    gs:// run directory: every assertion below reads the store, and each rerun starts from a new, empty working
    copy that pulls what it needs (finished stages, evaluations, the compile cache)."""
    run_dir = tmp_path / "run"
    work = lambda i: ["--local-dir", str(tmp_path / f"work{i}")]
    assert run.main(["--run-dir", str(run_dir), *work(1), *MINI]) == 0
    first = capsys.readouterr().out
    assert not (tmp_path / "work1" / "sft" / "ckpt").exists() and (run_dir / "sft" / "ckpt").is_dir()
    for stage in ("align", "sft", "cold_start", "grpo"):
        assert (run_dir / stage / "DONE.json").is_file()
        assert (run_dir / "eval" / f"{stage}.json").is_file()
    align_metrics = json.loads((run_dir / "eval" / "align.json").read_text())["metrics"]
    assert set(align_metrics) >= {"label_acc", "label_auc", "side_acc"}
    summary = (run_dir / "summary.md").read_text()
    assert "| sft |" in summary and "| grpo |" in summary and "Report Arena" in summary
    blind = json.loads((run_dir / "eval" / "question_only.json").read_text())  # the no-image baseline
    assert "| question_only (no model, no image) |" in summary and "grpo − question_only" in summary
    sft_eval = json.loads((run_dir / "eval" / "sft.json").read_text())
    assert [r["example_id"] for r in blind["records"]] == [r["example_id"] for r in sft_eval["records"]]
    for f in ("plots/curves.png", "plots/stages.png", "metrics.csv"):
        assert (run_dir / f).is_file(), f
    assert list((run_dir / "gallery").glob("*.png"))
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert {r.get("train_stage") for r in records} >= {"align", "sft", "cold_start", "grpo"}
    n_records = len(records)
    # GRPO validation every step (tensorboard and summary.md) and dynamic sampling's refills from the prompt stream
    val = [r for r in records if r.get("train_stage") == "grpo" and "val/reward/overall" in r]
    assert [r["step"] for r in val] == [1, 2] and all("val/reward/format" in r for r in val)
    assert "GRPO validation" in summary
    grpo = [r for r in records if r.get("train_stage") == "grpo" and "dynamic_sampling/rollouts" in r]
    assert len(grpo) == 2 and max(r["dynamic_sampling/rollouts"] for r in grpo) > 1  # refilled from the stream

    # the export opens in transformers and computes the same logits as the run's final parameters
    import torch  # noqa: PLC0415 heavy
    from transformers import Qwen2_5_VLForConditionalGeneration  # noqa: PLC0415 heavy

    hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(run_dir / "hf_export").eval()
    model, _ = load_pretrained(run_dir / "hf_export")
    ids = np.array([[40, 41, 42, 43, 44]], np.int32)  # ordinary tokens (ids < 10 are specials)
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(ids, dtype=torch.long)).logits.numpy()
    ours = np.asarray(model(ids))
    np.testing.assert_allclose(ours, ref, atol=2e-5)

    # rerun: nothing is retrained or re-evaluated
    assert run.main(["--run-dir", str(run_dir), *work(2), *MINI]) == 0
    second = capsys.readouterr().out
    assert f"[run dir] working copy {tmp_path / 'work2'} of {run_dir}" in second
    assert second.count("finished earlier") == 4 and "evaluating" not in second, second  # align + 3 stages
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == n_records
    assert "evaluating" in first

    # rerunning one stage alone starts it from the earlier stages' final parameters (cold start: no sampler to
    # compile; GRPO's path is the same loop)
    shutil.rmtree(run_dir / "cold_start")
    (run_dir / "eval" / "cold_start.json").unlink()
    assert (
        run.main(["--run-dir", str(run_dir), *work(3), "--stages", "cold_start", "--set", "export_hf=false", *MINI])
        == 0
    )
    third = capsys.readouterr().out
    assert "[sft] not selected; later stages start from its final parameters" in third, third
    assert "[cold_start] 2 steps" in third and (run_dir / "cold_start" / "DONE.json").is_file()
    # ... and compiles nothing: every program it runs was compiled by the first run, into <run dir>/xla_cache
    cache_line = [ln for ln in third.splitlines() if ln.startswith("[compile cache]")]
    assert cache_line and cache_line[0].endswith(", 0 compiled") and " 0 programs loaded" not in cache_line[0], third


@pytest.mark.slow
def test_synthetic_run_from_a_checkpoint_uses_its_tokenizer_and_scores_the_base(tmp_path, capsys):
    """--set hf_checkpoint=DIR on the synthetic benchmark: the checkpoint's tokenizer.json encodes the benchmark
    (no SentencePiece is trained), no alignment stage runs, and the checkpoint is scored zero-shot as `base`."""
    ckpt = tmp_path / "ckpt"  # a tiny checkpoint whose BPE knows the benchmark's words
    tok = train_byte_level_bpe(tokenizer_corpus(PretrainConfig(tokenizer_studies=40)), 1024, ckpt / "tokenizer.json")
    m = with_tokenizer(preset("tiny"), tok)
    save_pretrained(Qwen25VL(m, nnx.Rngs(0)), ckpt, config=m)
    run_dir = tmp_path / "run"
    short = [
        "--set",
        f"hf_checkpoint={tmp_path / 'ckpt'}",
        "--set",
        "align.steps=0",
        "--set",
        "data.train_examples=24",
        "--set",
        "eval.examples=8",
        "--set",
        "eval.bootstrap=20",
        "--set",
        "sft.steps=2",
        "--set",
        "eval.max_new_tokens=8",
        "--set",
        "export_hf=false",
    ]
    assert run.main(["--run-dir", str(run_dir), "--stages", "sft", *short]) == 0
    out = capsys.readouterr().out
    assert "[model] loading" in out and "[align]" not in out
    base = json.loads((run_dir / "eval" / "base.json").read_text())
    assert "image_control" in base["metrics"] and len(base["records"]) == 8
    assert not (run_dir / "tokenizer").exists()  # the checkpoint's tokenizer.json, not a new one
    summary = (run_dir / "summary.md").read_text()
    assert "| base |" in summary and "| sft |" in summary and "sft − base" in summary


def test_bad_override_is_one_line_error(tmp_path, capsys):
    assert run.main(["--run-dir", str(tmp_path), "--set", "sft.stepz=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "sft.stepz" in err and "\n" not in err
