"""The training loop shared by every stage: resume, step, NaN guard, metrics, checkpoints, SIGTERM.

The data iterator yields `(arrays, meta)`: `arrays` is the jit-ready batch dict, `meta` holds host-side
facts such as `example_ids` (named in errors). It exposes `get_state()` / `set_state(state)` (grain
iterators do) so a resumed run continues with exactly the batches an uninterrupted run would see.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import jax
import numpy as np
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from dmx_jax.perf.flops import mfu, peak_flops_per_device
from dmx_jax.sharding.distributed import is_main_process
from dmx_jax.training.checkpoint import Checkpointer, PreemptionGuard
from dmx_jax.training.state import TrainState


class StatefulIterator(Protocol):
    def __next__(self) -> tuple[dict, dict]: ...
    def get_state(self) -> Any: ...
    def set_state(self, state: Any) -> None: ...


class NonFiniteLossError(FloatingPointError):
    """Raised when a step produces a NaN/inf loss or gradient norm."""


class MetricsWriter:
    """Appends one JSON object per line to `path` and, when `tensorboard_dir` is given, the numeric fields as
    TensorBoard scalars tagged `<train_stage>/<key>` (main process only)."""

    def __init__(self, path: str | Path | None, stage: str = "", tensorboard_dir: str | Path | None = None):
        self.path = Path(path) if path else None
        self.stage = stage
        self._tb = None
        if self.path and is_main_process():
            self.path.parent.mkdir(parents=True, exist_ok=True)
        if tensorboard_dir and is_main_process():
            from tensorboardX import SummaryWriter  # noqa: PLC0415 heavy

            self._tb = SummaryWriter(str(tensorboard_dir), flush_secs=10)

    def write(self, record: dict) -> None:
        if not self.path or not is_main_process():
            return
        rec = {"stage": self.stage, "time": time.time(), **{k: _to_py(v) for k, v in record.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        if self._tb is not None:
            prefix = rec.get("train_stage") or rec.get("eval_stage") or self.stage or "run"
            step = int(rec.get("step", 0) or 0)
            for k, v in rec.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("step", "time"):
                    self._tb.add_scalar(f"{prefix}/{k}", v, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _to_py(v):
    if isinstance(v, (jax.Array, np.ndarray, np.generic)):
        v = np.asarray(v)
        return v.item() if v.size == 1 else v.tolist()
    return v


def _throughput(flops: float, seconds: float, peak_per_device: float | None) -> dict:
    out = {"tflops_per_s": flops / max(seconds, 1e-9) / 1e12}
    util = mfu(flops, seconds, jax.device_count(), peak_per_device)
    if util is not None:
        out["mfu"] = util
    return out


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """How a stage's loop runs. bar_metrics: (label, metric key) pairs shown on the progress bar when present."""

    num_steps: int
    stage: str = "train"
    log_every: int = 1
    progress: bool = True
    bar_metrics: tuple[tuple[str, str], ...] = (("loss", "loss"),)


@dataclasses.dataclass(frozen=True)
class LoopIO:
    """What the loop talks to. prepare(arrays, meta) -> step inputs (e.g. placed on the mesh); flops_fn(arrays)
    -> model FLOPs of the step (dmx_jax.perf.flops.batch_train_flops), which adds tflops_per_s and, on devices
    with a known bf16 peak, mfu to every logged step; run_config is saved with each checkpoint."""

    checkpointer: Checkpointer | None = None
    writer: MetricsWriter | None = None
    run_config: Any = None
    prepare: Callable[[dict, dict], dict] | None = None
    flops_fn: Callable[[dict], float] | None = None
    on_step: Callable[[int, dict, TrainState], None] | None = None  # (step, metrics, state) after each step
    guard: PreemptionGuard | None = None


def agreed_stop(local: bool) -> bool:
    """Whether any process was signalled: every host of a pod stops, and saves, at the same step. One tiny
    all-gather per step when there are several processes; the local flag otherwise."""
    if jax.process_count() == 1:
        return local

    return bool(np.any(multihost_utils.process_allgather(np.asarray([local], np.int32))))


def _bar_postfix(metrics: dict, fields) -> dict:
    return {label: f"{float(metrics[key]):.4g}" for label, key in fields if key in metrics}


def train_loop(
    step_fn: Callable[[TrainState, dict], tuple[TrainState, dict]],
    state: TrainState,
    data: StatefulIterator,
    cfg: LoopConfig,
    io: LoopIO = LoopIO(),
) -> tuple[TrainState, dict]:
    """Run `step_fn` until `state.step == cfg.num_steps`, resuming from `state` as given.

    Returns the final state and a summary {'steps_run', 'preempted', 'last_metrics'}.
    """
    guard, ck, stage, num_steps = io.guard or PreemptionGuard(), io.checkpointer, cfg.stage, cfg.num_steps
    peak = peak_flops_per_device(jax.devices()[0].device_kind) if io.flops_fn is not None else None
    start = int(state.step)
    last: dict = {}
    bar = None
    if cfg.progress and is_main_process() and num_steps > start:
        bar = tqdm(total=num_steps, initial=start, desc=stage, dynamic_ncols=True, leave=False)
    preempted = False
    with guard.installed():
        step = start
        while step < num_steps:
            arrays, meta = next(data)
            t0 = time.perf_counter()
            state, metrics = step_fn(state, io.prepare(arrays, meta) if io.prepare else arrays)
            step += 1
            loss = float(metrics["loss"])
            if not math.isfinite(loss) or not math.isfinite(float(metrics.get("grad_norm", 0.0))):
                good = ck.latest_step() if ck else None
                ids = list(meta.get("example_ids", []))[:16]
                raise NonFiniteLossError(
                    f"[{stage}] non-finite loss {loss} at step {step} (grad_norm "
                    f"{float(metrics.get('grad_norm', 0.0))}); batch example_ids {ids}; last good checkpoint: "
                    f"{f'step {good} in {ck.directory}' if good is not None else 'none'}"
                )
            last = {k: _to_py(v) for k, v in metrics.items()}
            last["step_time_s"] = time.perf_counter() - t0
            if "skipped" in meta:  # streamed batches: examples dropped as too long since the last batch
                last["data/skipped_too_long"] = len(meta["skipped"])
            if io.flops_fn is not None:
                last.update(_throughput(io.flops_fn(arrays), last["step_time_s"], peak))
            if io.writer and (step % cfg.log_every == 0 or step == num_steps):
                io.writer.write({"step": step, "train_stage": stage, **last})
            if io.on_step:
                io.on_step(step, last, state)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(_bar_postfix(last, cfg.bar_metrics))
            stop = agreed_stop(guard.stop_requested)
            if ck:
                ck.save(step, state, data_state=data.get_state(), config=io.run_config, force=step == num_steps or stop)
            if stop:
                preempted = True
                break
    if ck:
        ck.wait()
    if bar is not None:
        bar.close()
    return state, {"steps_run": step - start, "preempted": preempted, "last_metrics": last}
