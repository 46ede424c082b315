"""Orbax checkpoints with automatic resume, SIGTERM saves, and fallback past a corrupt latest step.

A checkpoint holds the TrainState (params, optimizer state, step, RNG), the data-iterator state and the
run config (JSON). Restoring takes an abstract TrainState whose leaves carry the target shardings, so a
run saved on one mesh restores onto another. Every process's data-iterator state is kept (each reads its own
shard): <directory>_data/<step>/process_<i>.json beside orbax's steps, process 0's also in the step itself.
The directory may be remote (`gs://bucket/run/ckpt`): it is kept as an etils.epath path and handed to orbax
unchanged; `remote_path_error` says in one line which extra a missing epath backend needs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import logging
import os
import signal
import threading
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from dmx_jax.training.state import TrainState

log = logging.getLogger(__name__)


# URI scheme -> (groups of modules, each group satisfied by any one of its modules; the dmx-jax extra that
# installs them). gs://: an etils.epath backend (gcsfs, or TensorFlow's gfile) for orbax's directory work, and
# google-cloud-storage, which orbax imports to list the steps of a gs:// directory. Tensorstore (always
# installed) writes the arrays itself.
REMOTE_BACKENDS = {"gs": ((("gcsfs", "tensorflow"), ("google.cloud.storage",)), "gcs")}


def is_remote(path: str | os.PathLike) -> bool:
    return "://" in str(path)


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # a missing parent package of a dotted name
        return False


def remote_path_error(path: str | os.PathLike) -> str | None:
    """None when `path` is local or what its scheme needs is importable, else one line saying what to install."""
    if not is_remote(path):
        return None
    scheme = str(path).split("://", 1)[0]
    if scheme not in REMOTE_BACKENDS:
        return f"{path}: unsupported scheme {scheme}:// (remote directories: {', '.join(REMOTE_BACKENDS)}://)"
    groups, extra = REMOTE_BACKENDS[scheme]
    missing = [" or ".join(g) for g in groups if not any(_importable(m) for m in g)]
    if not missing:
        return None
    return (
        f"{path}: {scheme}:// paths need {' and '.join(missing)} (orbax / etils.epath), not installed: "
        f"pip install 'dmx-jax[{extra}]'"
    )


def as_path(directory: str | os.PathLike) -> epath.Path:
    """A local directory made absolute, or a remote URI kept exactly as given (both as etils.epath paths)."""
    return epath.Path(directory) if is_remote(directory) else epath.Path(os.path.abspath(directory))


def _as_tree(state: TrainState) -> dict:
    """The saved tree; `aux` only when it holds something, so stages without algorithm state keep the layout."""
    tree = {"params": state.params, "opt_state": state.opt_state, "step": state.step, "rng": state.rng}
    return {**tree, "aux": state.aux} if state.aux else tree


class Checkpointer:
    """CheckpointManager wrapper: save every `save_every` steps (and when forced), keep the last `keep`."""

    def __init__(self, directory: str | os.PathLike, *, save_every: int = 100, keep: int = 3, async_save: bool = True):
        error = remote_path_error(directory)
        if error:
            raise ValueError(error)
        self.directory = as_path(directory)
        self.save_every = save_every
        self._mngr = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, save_interval_steps=1, enable_async_checkpointing=async_save, create=True
            ),
        )

    def all_steps(self) -> list[int]:
        return sorted(self._mngr.all_steps())

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def save(
        self, step: int, state: TrainState, *, data_state: Any = None, config: Any = None, force: bool = False
    ) -> bool:
        """Save when `step` is on the interval or `force`; returns whether a save started."""
        if not force and (self.save_every <= 0 or step % self.save_every):
            return False
        if step in self._mngr.all_steps():
            return False
        args = {
            "state": ocp.args.StandardSave(_as_tree(state)),
            "extra": ocp.args.JsonSave({"data_state": data_state, "config": config, "step": int(step)}),
        }
        self._write_data_state(step, data_state)
        self._mngr.save(step, args=ocp.args.Composite(**args), force=True)
        return True

    @property
    def _data_dir(self) -> epath.Path:
        return self.directory.with_name(self.directory.name + "_data")

    def _write_data_state(self, step: int, data_state: Any) -> None:
        """This process's iterator state for `step` (atomic); states of steps orbax no longer keeps are removed."""
        path = self._data_dir / str(step) / f"process_{jax.process_index()}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data_state))
        tmp.replace(path)
        keep = {str(s) for s in self._mngr.all_steps()} | {str(step)}
        if jax.process_index() == 0:
            for old in self._data_dir.iterdir():
                if old.name not in keep:
                    with contextlib.suppress(OSError):
                        old.rmtree(missing_ok=True)

    def _read_data_state(self, step: int, saved: Any) -> Any:
        path = self._data_dir / str(step) / f"process_{jax.process_index()}.json"
        return json.loads(path.read_text()) if path.is_file() else saved

    def restore(self, abstract_state: TrainState, step: int | None = None) -> tuple[TrainState, Any, int] | None:
        """Restore `step` (default: the newest that restores cleanly); None when there is no checkpoint.

        A step that fails to restore (half-written, truncated, corrupt files) is skipped with a warning
        and the previous one is tried.
        """
        steps = [step] if step is not None else list(reversed(self.all_steps()))
        target = _as_tree(abstract_state)
        for s in steps:
            try:
                r = self._mngr.restore(
                    s, args=ocp.args.Composite(state=ocp.args.StandardRestore(target), extra=ocp.args.JsonRestore())
                )
            except Exception as e:
                if step is not None:
                    raise RuntimeError(f"checkpoint step {s} in {self.directory} could not be restored: {e}") from e
                log.warning(
                    "checkpoint step %d in %s is unreadable (%s: %s); falling back to an earlier step",
                    s,
                    self.directory,
                    type(e).__name__,
                    str(e).splitlines()[0] if str(e) else "",
                )
                continue
            tree = r["state"]
            state = TrainState(
                params=tree["params"],
                opt_state=tree["opt_state"],
                step=tree["step"],
                rng=tree["rng"],
                aux=tree.get("aux", {}),
            )
            extra = r["extra"] or {}
            return state, self._read_data_state(s, extra.get("data_state")), s
        return None

    def read_config(self, step: int | None = None) -> Any:
        step = self.latest_step() if step is None else step
        if step is None:
            return None
        return self._mngr.restore(step, args=ocp.args.Composite(extra=ocp.args.JsonRestore()))["extra"].get("config")

    def wait(self) -> None:
        self._mngr.wait_until_finished()

    def close(self) -> None:
        self._mngr.wait_until_finished()
        self._mngr.close()


def abstract_like(state: TrainState, shardings: TrainState | None = None) -> TrainState:
    """ShapeDtypeStructs of `state` (optionally with target shardings) for `Checkpointer.restore`."""
    if shardings is None:
        return jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), state
        )
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)


@dataclasses.dataclass
class PreemptionGuard:
    """Turns SIGTERM (sent by preemptible TPU/GPU schedulers) and SIGINT into a flag the loop polls.

    The loop checks `guard.stop_requested` after each step, saves a checkpoint and exits cleanly.
    """

    signals: tuple[int, ...] = (signal.SIGTERM,)
    stop_requested: bool = False
    received: int | None = None

    def _handle(self, signum, frame):
        self.stop_requested = True
        self.received = signum

    @contextlib.contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {s: signal.getsignal(s) for s in self.signals}
        for s in self.signals:
            signal.signal(s, self._handle)
        try:
            yield self
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
