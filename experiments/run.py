"""python -m experiments.run [--config tiny] [--set key=value ...] [--run-dir DIR]

Data -> stage 1 SFT -> stage 2 cold-start reasoning SFT -> stage 3 GRPO -> evaluation of every stage ->
Report Arena among the stages -> Hugging Face export. Every stage checkpoints; rerunning the same command
on the same run directory resumes where it stopped and skips finished stages.
Outputs: DIR/summary.md, DIR/metrics.jsonl, DIR/eval/*.json, DIR/plots/*.png, DIR/gallery/*.png, DIR/hf_export/.
DIR may be a bucket (gs://...; experiments.run_dir): checkpoints are written there, everything else in a local
working copy pushed after every stage and when the run stops, and pulled back when it restarts.
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
from experiments.run_dir import RunDir

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
    ap.add_argument(
        "--run-dir",
        default=None,
        help="default: runs/<config name>; gs://bucket/path keeps checkpoints in the bucket and the other files in a "
        "local working copy pushed after every stage (see --local-dir)",
    )
    ap.add_argument(
        "--local-dir",
        default=None,
        help="the working copy of the run directory (default for gs://: ~/.cache/dmx-jax/runs/<bucket_path>); "
        "with a local --run-dir (e.g. a slow shared filesystem) the run works here and pushes there",
    )
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
        from dmx_jax.training.checkpoint import remote_path_error  # noqa: PLC0415 heavy

        missing = remote_path_error(args.run_dir)
        if missing:
            print(f"error: --run-dir {missing}; or use a mounted bucket (gcsfuse)", file=sys.stderr)
            return 2
    if args.distributed != "off":
        from dmx_jax.sharding import DistributedConfig, initialize  # noqa: PLC0415 heavy

        initialize(DistributedConfig(auto=args.distributed == "auto"))
    if args.dry_run:
        return _dry_run(cfg, stages)
    import jax  # noqa: PLC0415 heavy (after the distributed start-up)

    rd = RunDir.open(args.run_dir or Path("runs") / cfg.name, local=args.local_dir, pushes=jax.process_index() == 0)
    if rd.pull():
        print(f"[run dir] working copy {rd.local} of {rd}", flush=True)
    run_dir = rd.local
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from dmx_jax.training.compile_cache import persistent_compile_cache  # noqa: PLC0415 heavy
    from experiments.pipeline import run_pipeline  # noqa: PLC0415 heavy

    t0 = time.time()
    cache_dir = run_dir / "xla_cache"
    try:
        with persistent_compile_cache(cache_dir) if cfg.compile_cache else contextlib.nullcontext() as counts:
            summary = run_pipeline(cfg, rd, stages=stages)
    except _user_errors() as e:  # bad input: one line naming the file / field, no traceback
        print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 2
    finally:  # what the run wrote reaches the run directory however it stopped (a signal included)
        rd.push()
    print(summary)
    if counts is not None:
        print(counts.line(cache_dir))
    print(f"\nrun directory: {rd}  ({time.time() - t0:.0f} s)")
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
