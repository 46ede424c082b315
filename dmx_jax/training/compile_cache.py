"""The persistent XLA compilation cache of a run: a restarted, resumed or preempted run loads the programs it
compiled before instead of compiling them again (minutes per large program at 7B).

JAX keeps one cache per process; `persistent_compile_cache(path)` points it at `path` for a block and puts the
previous setting back afterwards, so a process that runs several runs (a notebook, the test suite) never writes
into a finished run's directory. `CompileCounts` counts, over the block, the programs compiled and the ones
loaded from the cache (jax's own monitoring events), for the run's closing line.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

import jax
from jax import monitoring
from jax.experimental.compilation_cache import compilation_cache as cache

_REQUEST, _HIT = "/jax/compilation_cache/compile_requests_use_cache", "/jax/compilation_cache/cache_hits"


@dataclasses.dataclass
class CompileCounts:
    loaded: int = 0  # programs read from the cache
    compiled: int = 0  # programs compiled (and written to it)

    def line(self, path: Path) -> str:
        return f"[compile cache] {self.loaded} programs loaded from {path}, {self.compiled} compiled"


@contextlib.contextmanager
def persistent_compile_cache(path: Path | str, min_compile_secs: float = 0.0):
    """with persistent_compile_cache(run_dir / "xla_cache") as counts: ... (every program compiled in the block
    taking at least min_compile_secs is cached; 0 caches all of them)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    keys = (
        "jax_compilation_cache_dir",
        "jax_persistent_cache_min_compile_time_secs",
        "jax_persistent_cache_min_entry_size_bytes",
        "jax_persistent_cache_enable_xla_caches",
    )
    before = {k: getattr(jax.config, k) for k in keys}
    counts = CompileCounts()

    def listen(event: str, **_):  # every cacheable compile asks the cache first; a hit skips the compile
        if event == _REQUEST:
            counts.compiled += 1
        elif event == _HIT:
            counts.loaded += 1
            counts.compiled -= 1

    monitoring.register_event_listener(listen)
    cache.reset_cache()
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_secs))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)  # no size floor
    # no XLA GPU autotune / kernel caches inside the cache directory: their paths enter every program's compile
    # options, hence its cache key, so a cache copied to another directory (a bucket run's working copy on a new
    # VM) would never hit, and on GPU pods process 0's key would differ from the others'
    jax.config.update("jax_persistent_cache_enable_xla_caches", "none")
    try:
        yield counts
    finally:
        monitoring.unregister_event_listener(listen)
        for k, v in before.items():
            jax.config.update(k, v)
        cache.reset_cache()
