"""A run directory that may live in a bucket (`--run-dir gs://bucket/run`).

The run writes its small files (config, metrics, tensorboard, evaluations, tables, plots, DONE markers, the
tokenizer, the compile cache, the HF export) into a local working copy and pushes what changed to the run
directory after every stage and when it stops (finished, stopped by a signal, or failed); checkpoints and each
stage's final parameters are written to and read from the run directory itself (orbax through etils.epath), never
copied. A restart pulls the small files first, so finished stages, evaluations already written and cached
programs are found as in a local run. A local --run-dir without --local-dir is the working copy itself.

    rd = RunDir.open("gs://bucket/run", local="/tmp/dmx/run")
    rd.pull(); ...; rd.push()
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

from etils import epath

IN_PLACE = ("ckpt", "ckpt_data", "final_params")  # a stage's checkpoints and parameters: written where they live
_CHUNK = 16 << 20


@dataclasses.dataclass
class RunDir:
    """local: the working copy every file but checkpoints is written to; store: the run directory when it is
    somewhere else (a bucket, or a shared filesystem given with --local-dir), else None."""

    local: Path
    store: epath.Path | None = None
    pushes: bool = True  # False on every process but the first of a multi-host run (one writer per file)
    _pushed: dict = dataclasses.field(default_factory=dict)  # relative path -> (size, mtime_ns) last pushed

    @classmethod
    def open(cls, run_dir: str | os.PathLike, local: str | os.PathLike | None = None, pushes: bool = True) -> RunDir:
        remote = "://" in str(run_dir)
        if not remote and local is None:
            return cls(Path(run_dir))
        if local is None:
            bucket_path = str(run_dir).split("://", 1)[1].strip("/").replace("/", "_")
            local = Path.home() / ".cache" / "dmx-jax" / "runs" / bucket_path
        store = epath.Path(run_dir) if remote else epath.Path(os.path.abspath(run_dir))
        return cls(Path(local), store, pushes)

    def stage_store(self, stage: str):
        """Where stage `stage` keeps its checkpoints and final parameters (the run directory itself)."""
        return (self.store / stage) if self.store is not None else (self.local / stage).absolute()

    def __str__(self) -> str:
        return str(self.store) if self.store is not None else str(self.local)

    def pull(self) -> int:
        """Copy the run directory's small files that the working copy lacks or holds at another size; returns
        how many were copied."""
        self.local.mkdir(parents=True, exist_ok=True)
        if self.store is None or not self.store.exists():
            return 0
        copied = 0
        for src in _files(self.store):
            rel = src.relative_to(self.store)
            dst = self.local / str(rel)
            size = src.stat().length
            if dst.is_file() and dst.stat().st_size == size:
                self._remember(rel)
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            with src.open("rb") as fin, open(dst, "wb") as fout:
                shutil.copyfileobj(fin, fout, _CHUNK)
            self._remember(rel)
            copied += 1
        return copied

    def push(self) -> int:
        """Copy the working copy's files that changed since the last push (or pull) to the run directory; returns
        how many were copied."""
        if self.store is None or not self.pushes:
            return 0
        copied = 0
        for src in sorted(p for p in self.local.rglob("*") if p.is_file()):
            rel = src.relative_to(self.local)
            if rel.parts and any(part in IN_PLACE for part in rel.parts):
                continue
            st = src.stat()
            if self._pushed.get(str(rel)) == (st.st_size, st.st_mtime_ns):
                continue
            dst = self.store / str(rel)
            dst.parent.mkdir(parents=True, exist_ok=True)
            with open(src, "rb") as fin, dst.open("wb") as fout:
                shutil.copyfileobj(fin, fout, _CHUNK)
            self._pushed[str(rel)] = (st.st_size, st.st_mtime_ns)
            copied += 1
        return copied

    def _remember(self, rel) -> None:
        st = (self.local / str(rel)).stat()
        self._pushed[str(rel)] = (st.st_size, st.st_mtime_ns)


def _files(root: epath.Path):
    """Every file under `root` outside the stages' in-place checkpoint folders."""
    for path in root.iterdir():
        if path.name in IN_PLACE:
            continue
        if path.is_dir():
            yield from _files(path)
        else:
            yield path
