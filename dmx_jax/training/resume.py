"""Start-or-resume: build the train state, restore the newest good checkpoint if the run has one."""

from __future__ import annotations

import logging
from typing import Any

import jax

from dmx_jax.training.checkpoint import Checkpointer, abstract_like
from dmx_jax.training.state import TrainState

log = logging.getLogger(__name__)


def start_or_resume(
    state: TrainState, shardings: TrainState, checkpointer: Checkpointer, data: Any = None
) -> tuple[TrainState, int]:
    """Place `state` with `shardings`, then replace it by the newest restorable checkpoint if any.

    When a checkpoint is restored and `data` has `set_state`, the data iterator is moved to where the
    checkpointed run stood. Returns (state, restored_step or 0).
    """
    state = jax.device_put(state, shardings)
    restored = checkpointer.restore(abstract_like(state, shardings))
    if restored is None:
        return state, 0
    new_state, data_state, step = restored
    if data is not None and data_state is not None and hasattr(data, "set_state"):
        data.set_state(data_state)
    log.info("resumed from step %d in %s", step, checkpointer.directory)
    return new_state, step
