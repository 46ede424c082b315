"""Every XLA compile in a block, from jax's own compile log line ("Compiling <module> with global shapes and
types <avals>. Argument mapping: <shardings>."), so a test can fail on a program compiled twice."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging

_LOGGER = "jax._src.interpreters.pxla"


@dataclasses.dataclass(frozen=True)
class Compile:
    module: str  # e.g. jit(step)
    avals: str  # global shapes and dtypes of the arguments
    shardings: str  # their shardings
    n_args: int  # flattened arguments


class _Collect(logging.Handler):
    def __init__(self, out: list):
        super().__init__(logging.DEBUG)
        self.out = out

    def emit(self, record):
        if str(record.msg).startswith("Compiling %s with global shapes") and len(record.args) == 3:
            module, avals, shardings = record.args
            self.out.append(Compile(str(module), str(avals), str(shardings), len(avals)))


@contextlib.contextmanager
def compiles():
    """with compiles() as log: ... -> log is the list of Compile records of the block, in order."""
    log: list[Compile] = []
    logger = logging.getLogger(_LOGGER)
    handler, level, propagate = _Collect(log), logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield log
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


def compiled_again(log: list[Compile], min_args: int = 0) -> dict[str, int]:
    """{module: times} for programs compiled more than once with the same argument shapes (a new layout or a
    lost cache entry), counting only programs with at least `min_args` flattened arguments (eager one-op
    dispatches have one or two)."""
    seen = collections.Counter(c.module + c.avals for c in log if c.n_args >= min_args)
    names = {c.module + c.avals: c.module for c in log}
    return {names[k]: n for k, n in seen.items() if n > 1}
