"""The driver on a real dataset format: MIMIC-CXR-JPG files + an HF Qwen2.5-VL folder with its tokenizer.json,
read through the adapter and the grain pipeline, all three stages, evaluation and export."""

from __future__ import annotations

import json

import pytest

from experiments import run
from tests.helpers.real_formats import mimic_report, write_mimic_cxr
from tests.helpers.tiny_checkpoint import FINDINGS
from tests.helpers.tiny_checkpoint import write_tiny_checkpoint as _checkpoint


@pytest.mark.slow
def test_run_on_mimic_format_with_hf_checkpoint(tmp_path, capsys):
    studies = []
    for i in range(9):
        split = "train" if i < 6 else "test"
        studies.append(
            {
                "subject": 10000000 + i,
                "study": 50000000 + i,
                "split": split,
                "images": [(f"img{i:02d}", "PA", (64, 80))],
                "report": mimic_report(FINDINGS[i % 3], "No acute process."),
                "labels": {"Pleural Effusion": 1.0} if i % 3 == 0 else {"No Finding": 1.0},
            }
        )
    write_mimic_cxr(tmp_path / "mimic", studies)
    _checkpoint(tmp_path / "ckpt")
    run_dir = tmp_path / "run"
    args = [
        "--run-dir",
        str(run_dir),
        "--set",
        f"hf_checkpoint={tmp_path / 'ckpt'}",
        "--set",
        "data.source=mimic_cxr",
        "--set",
        f"data.root={tmp_path / 'mimic'}",
        "--set",
        "eval.examples=4",
        "--set",
        "eval.bootstrap=20",
        "--set",
        "sft.steps=2",
        "--set",
        "sft.batch_size=8",
        "--set",
        "cold_start.steps=2",
        "--set",
        "cold_start.batch_size=8",
        "--set",
        "rl.steps=1",
        "--set",
        "rl.prompts_per_step=2",
        "--set",
        "rl.algo.max_new_tokens=8",
        "--set",
        "eval.max_new_tokens=8",
        "--set",
        "eval.reasoning_max_new_tokens=8",
        "--set",
        "data.max_seq_len=512",
        "--set",
        "data.reasoning_seq_len=640",
        "--set",
        "data.reasoning_prompt_len=512",
        "--set",
        "data.prompt_len=256",
        "--set",
        "data.on_too_long=error",
    ]
    assert run.main(args) == 0
    out = capsys.readouterr().out
    assert "reading mimic_cxr" in out and "| sft |" in out and "| grpo |" in out
    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert {r.get("train_stage") for r in recs} >= {"sft", "cold_start", "grpo"}
    ev = json.loads((run_dir / "eval" / "sft.json").read_text())
    assert {r["task"] for r in ev["records"]} == {"findings", "impression"}
    assert (run_dir / "hf_export" / "model.safetensors").is_file()


def test_real_source_without_root_or_tokenizer_is_a_config_error(tmp_path, capsys):
    _checkpoint(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "tokenizer.json").unlink()
    for extra, needle in (
        (["--set", "data.source=mimic_cxr"], "data.root"),
        (["--set", "data.source=mimic_cxr", "--set", f"data.root={tmp_path}"], "tokenizer"),
    ):
        rc = run.main(["--run-dir", str(tmp_path / "run"), "--set", f"hf_checkpoint={tmp_path / 'ckpt'}", *extra])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and err.startswith("error:") and needle in err and "\n" not in err, err
