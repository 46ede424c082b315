"""python -m experiments.run [--config tiny] [--set key=value ...] [--run-dir DIR]

Data -> stage 1 SFT -> stage 2 cold-start reasoning SFT -> stage 3 GRPO -> evaluation of every stage ->
Report Arena among the stages -> Hugging Face export. Every stage checkpoints; rerunning the same command
on the same run directory resumes where it stopped and skips finished stages.
Outputs: DIR/summary.md, DIR/metrics.jsonl, DIR/eval/*.json, DIR/plots/*.png, DIR/gallery/*.png, DIR/hf_export/.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

from absl import flags as _absl_flags

from experiments.overrides import ConfigError, apply_overrides

_absl_flags.FLAGS.mark_as_parsed()


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m experiments.run", description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="tiny", help="preset: tiny | tiny_base | qwen2_5_vl_3b | qwen2_5_vl_7b")
    ap.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set sft.steps=50 (repeatable)",
    )
    ap.add_argument("--run-dir", default=None, help="default: runs/<config name>")
    ap.add_argument(
        "--distributed",
        default="env",
        choices=("env", "auto", "off"),
        help="multi-host start-up: env = DMX_COORDINATOR/DMX_NUM_PROCESSES/DMX_PROCESS_ID when set; "
        "auto = jax.distributed.initialize() discovery (Cloud TPU pods, SLURM); off = one process",
    )
    ap.add_argument(
        "--stages",
        default="align,sft,cold_start,grpo",
        help="comma-separated subset of align,sft,cold_start,grpo (align runs when align.steps > 0)",
    )
    ap.add_argument(
        "--dry-run",
        action="store_true",
        help="check the config, build the mesh on this host's devices, print the plan and exit",
    )
    return ap.parse_args(argv)


def _remote_run_dir_error(run_dir: str) -> str:
    """Why a remote --run-dir is refused, in one line: the missing epath backend (and the extra that installs
    it), else that only checkpoints take remote paths today (the stage runner writes its run directory with
    local file APIs)."""
    from dmx_jax.training.checkpoint import remote_path_error  # noqa: PLC0415 heavy

    missing = remote_path_error(run_dir)
    if missing:
        return f"{missing}; or use a mounted bucket (gcsfuse)"
    return (
        f"{run_dir}: the stage runner writes its run directory through local file APIs, so only checkpoints "
        f"(dmx_jax.training.checkpoint.Checkpointer) take remote paths today; use a mounted bucket (gcsfuse) "
        f"or a shared filesystem"
    )


def main(argv=None) -> int:
    args = parse_args(argv)
    from experiments.configs import PRESETS  # noqa: PLC0415 heavy
    from experiments.validate import parse_stages, validate  # noqa: PLC0415 heavy

    if args.config not in PRESETS:
        print(f"error: unknown --config {args.config!r}; choose from {sorted(PRESETS)}", file=sys.stderr)
        return 2
    try:  # the whole config is checked before anything is computed
        cfg = validate(apply_overrides(PRESETS[args.config](), args.overrides))
        stages = parse_stages(args.stages)
    except (ConfigError, ValueError) as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    if "://" in str(args.run_dir or ""):
        print(f"error: --run-dir {_remote_run_dir_error(args.run_dir)}", file=sys.stderr)
        return 2
    if args.distributed != "off":
        from dmx_jax.sharding import DistributedConfig, initialize  # noqa: PLC0415 heavy

        initialize(DistributedConfig(auto=args.distributed == "auto"))
    if args.dry_run:
        return _dry_run(cfg, stages)
    run_dir = Path(args.run_dir or Path("runs") / cfg.name)
    run_dir.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from dmx_jax.training.compile_cache import persistent_compile_cache  # noqa: PLC0415 heavy
    from experiments.pipeline import run_pipeline  # noqa: PLC0415 heavy

    t0 = time.time()
    cache_dir = run_dir / "xla_cache"
    try:
        with persistent_compile_cache(cache_dir) if cfg.compile_cache else contextlib.nullcontext() as counts:
            summary = run_pipeline(cfg, run_dir, stages=stages)
    except _user_errors() as e:  # bad input: one line naming the file / field, no traceback
        print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 2
    print(summary)
    if counts is not None:
        print(counts.line(cache_dir))
    print(f"\nrun directory: {run_dir}  ({time.time() - t0:.0f} s)")
    return 0


def _dry_run(cfg, stages) -> int:
    """The plan without compute: the mesh over this host's devices, the stages and their batch shapes."""
    import jax  # noqa: PLC0415 heavy

    from dmx_jax.sharding import make_mesh  # noqa: PLC0415 heavy

    try:
        mesh = make_mesh(cfg.mesh)
    except ValueError as e:
        print(f"error: mesh {dataclasses.asdict(cfg.mesh)} on {jax.device_count()} devices: {e}", file=sys.stderr)
        return 2
    plan = {
        "config": cfg.name,
        "model": cfg.model,
        "dtype": cfg.dtype,
        "devices": jax.device_count(),
        "mesh": dict(mesh.shape),
        "stages": list(stages),
        "memory": dataclasses.asdict(cfg.memory),
        "batches": {
            "sft": [cfg.sft.batch_size, cfg.data.max_seq_len],
            "cold_start": [cfg.cold_start.batch_size, cfg.data.reasoning_seq_len],
            "grpo": [
                cfg.rl.prompts_per_step * cfg.rl.algo.group_size,
                cfg.data.reasoning_prompt_len + cfg.rl.algo.max_new_tokens,
            ],
        },
    }
    print(json.dumps(plan))
    return 0


def _user_errors() -> tuple[type[BaseException], ...]:
    from data_pipelines.adapters import MissingColumnError  # noqa: PLC0415 heavy
    from data_pipelines.image_io import ImageReadError  # noqa: PLC0415 heavy
    from data_pipelines.pipeline import DoesNotFit  # noqa: PLC0415 heavy
    from dmx_jax.hf.load import CheckpointError  # noqa: PLC0415 heavy

    return (ConfigError, CheckpointError, ImageReadError, DoesNotFit, MissingColumnError, FileNotFoundError)


if __name__ == "__main__":
    sys.exit(main())
