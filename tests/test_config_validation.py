"""Every wrong config value stops `python -m experiments.run` before any compute, with one line that names the
field, the value and what is allowed (no traceback); the README's TPU and GPU commands build their mesh."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from experiments.configs import qwen2_5_vl_7b, tiny
from experiments.overrides import ConfigError, apply_overrides, config_from_dict
from experiments.run import main
from experiments.validate import validate

ROOT = Path(__file__).resolve().parents[1]

BAD = [  # (cli arguments, words the one error line must contain)
    (["--config", "tinyy"], ["tinyy", "qwen2_5_vl_7b"]),
    (["--stages", "grp"], ["--stages", "grp", "cold_start"]),
    (["--stages", ","], ["--stages", "selects nothing"]),
    (["--set", "rl.reward_preset=papr"], ["rl.reward_preset", "papr", "grounded"]),
    (["--set", "data.on_too_long=skpi"], ["data.on_too_long", "skpi", "error, skip"]),
    (["--set", "data.source=mimic_cxrr"], ["data.source", "mimic_cxrr", "mimic_cxr"]),
    (["--set", "model=smal"], ["model", "smal", "small"]),
    (["--set", "dtype=bf16"], ["dtype", "bf16", "bfloat16"]),
    (["--set", "mesh.data=0"], ["mesh.data", "0", "-1"]),
    (["--set", "memory.remat=fulll"], ["memory.remat", "fulll", "full"]),
    (["--set", "memory.attention=flash"], ["memory.attention", "flash", "chunked"]),
    (["--set", "sft.optim.schedule=cosin"], ["sft.optim.schedule", "cosin", "cosine"]),
    (["--set", "eval.arena_judges=('rubric','llm')"], ["eval.arena_judges", "llm", "rubric"]),
    (["--set", "data.reasoning_tasks=('vqa','xray')"], ["data.reasoning_tasks", "xray", "grounding"]),
    (["--set", "sft.optim.grad_accum=3"], ["sft.optim.grad_accum", "3", "8"]),
    (["--set", "sft.loss_weighting=rows"], ["sft.loss_weighting", "rows", "token, row"]),
    (["--set", "data.vqa_family_weights=(('presense', 2.0),)"], ["data.vqa_family_weights", "presense", "presence"]),
    (["--set", "data.train_task_mix=(('vqa', -1.0),)"], ["data.train_task_mix", "('vqa', -1.0)", "weight >= 0"]),
    (["--set", "data.min_pixels=999999"], ["data.min_pixels", "data.max_pixels"]),
    (["--set", "rl.algo.group_size=0"], ["rl.algo.group_size"]),
    (["--set", "cold_start.steps=-5"], ["cold_start.steps", "-5", "positive"]),
    (["--set", "cold_start.pad_multiple=-64"], ["cold_start.pad_multiple", "-64", ">= 0"]),
    (["--set", "rl.algo.temperature=0.0"], ["temperature", "> 0"]),
    (["--set", "rl.algo.loss_mode=ppo"], ["loss_mode", "ppo", "gspo", "cispo"]),
    (["--set", "rl.algo.adv_estimator=gae"], ["adv_estimator", "gae", "rloo", "reinforce_plus_plus"]),
    (["--set", "rl.algo.ppo_mini_batch_size=3"], ["rl.algo.ppo_mini_batch_size", "3", "rl.prompts_per_step"]),
    (["--set", "rl.algo.old_logp=current", "--set", "rl.algo.num_iterations=2"], ["old_logp", "num_iterations"]),
    (["--set", "rl.eval_every=-1"], ["rl.eval_every", "-1"]),
    (["--set", "rl.reward_bytes_per_token=0"], ["rl.reward_bytes_per_token", "0", "positive"]),
    (["--set", "sft.vision_lr=-0.1"], ["sft.vision_lr", "-0.1", "frozen"]),
    (["--run-dir", "gs://bucket/x"], ["gs://bucket/x", "mounted"]),
]


@pytest.mark.parametrize("argv,words", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_value_stops_at_once_with_one_line(argv, words, capsys, tmp_path):
    t0 = time.perf_counter()
    code = main([*argv, "--distributed", "off"] + ([] if "--run-dir" in argv else ["--run-dir", str(tmp_path)]))
    err = capsys.readouterr().err.strip()
    assert code == 2 and time.perf_counter() - t0 < 30
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err, err
    for w in words:
        assert w in err, (w, err)
    assert not any(tmp_path.iterdir())  # nothing was rendered, trained or written


def test_cli_error_is_one_line_in_a_fresh_process(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "experiments.run", "--set", "rl.reward_preset=papr", "--run-dir", str(tmp_path / "run")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [r.stderr.strip()] and "papr" in r.stderr
    assert not (tmp_path / "run").exists()


def test_saved_config_with_a_bad_value_is_caught_by_validate():
    saved = json.loads(json.dumps(__import__("dataclasses").asdict(tiny())))
    saved["mesh"] = {"data": -1, "fsdp": -1, "tensor": 1}
    with pytest.raises(ConfigError, match="mesh.data and mesh.fsdp are both -1"):
        validate(config_from_dict(tiny(), saved))
    validate(tiny())  # the presets themselves pass


def test_setting_a_mesh_axis_to_minus_one_releases_the_presets_other():
    cfg = apply_overrides(qwen2_5_vl_7b(), ["mesh.tensor=2", "mesh.data=-1"])
    assert (cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor) == (-1, 1, 2)
    cfg = apply_overrides(cfg, ["mesh.fsdp=-1"])  # the axis named last takes the rest
    assert (cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor) == (1, -1, 2)
    validate(cfg)


@pytest.mark.parametrize(
    "argv,mesh",
    [
        # README, "On a Cloud TPU pod": the 7B preset with --set mesh.fsdp=-1
        (["--config", "qwen2_5_vl_7b", "--set", "mesh.fsdp=-1"], {"data": 1, "fsdp": 8, "tensor": 1}),
        # README, "On GPUs": one node with 8 GPUs, mesh.fsdp=8
        (["--config", "qwen2_5_vl_7b", "--set", "mesh.fsdp=8"], {"data": 1, "fsdp": 8, "tensor": 1}),
        (
            ["--config", "qwen2_5_vl_7b", "--set", "mesh.tensor=4", "--set", "mesh.fsdp=-1"],
            {"data": 1, "fsdp": 2, "tensor": 4},
        ),
    ],
)
def test_readme_scale_commands_build_their_mesh_on_8_devices(argv, mesh, capsys):
    assert main([*argv, "--dry-run", "--distributed", "off"]) == 0
    plan = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert plan["mesh"] == mesh and plan["devices"] == 8 and plan["stages"] == ["align", "sft", "cold_start", "grpo"]


def test_a_mesh_that_cannot_fit_the_devices_is_one_line(capsys):
    assert main(["--config", "qwen2_5_vl_7b", "--set", "mesh.fsdp=3", "--dry-run", "--distributed", "off"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "mesh" in err and "8 devices" in err
