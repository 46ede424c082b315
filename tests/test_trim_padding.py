"""In-memory training batches cut to their longest row (StageConfig.pad_multiple): the SFT loss and its gradient
are those of the full-length batch, left-padded prompt batches are never cut, and the cut length rounds up."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from data_pipelines.pipeline import trim_right_padding
from dmx_jax.model import Qwen25VL
from dmx_jax.model.config import tiny
from dmx_jax.training.sft import sft_loss


def _right_padded(lengths, t=48, seed=0):
    r = np.random.default_rng(seed)
    b = len(lengths)
    ids = r.integers(3, 1000, size=(b, t)).astype(np.int32)
    mask = (np.arange(t)[None] < np.asarray(lengths)[:, None]).astype(np.int32)
    ids = np.where(mask > 0, ids, 0)
    loss_mask = mask * (np.arange(t)[None] >= 4)
    pos = np.broadcast_to(np.arange(t, dtype=np.int32), (b, 3, t)).copy()
    return {"input_ids": ids, "attention_mask": mask, "loss_mask": loss_mask.astype(np.int32), "positions": pos}


def test_cut_length_rounds_up_and_prompts_stay():
    batch = _right_padded([9, 21, 5])
    cut = trim_right_padding(batch, 16)
    assert cut["input_ids"].shape == (3, 32) and cut["positions"].shape == (3, 3, 32)
    assert trim_right_padding(batch, 0)["input_ids"].shape == (3, 48)
    assert trim_right_padding(_right_padded([47, 3]), 16)["input_ids"].shape == (2, 48)  # 47 -> 48: unchanged
    left = {k: v[:, ::-1].copy() for k, v in batch.items()}  # left-padded prompts
    assert trim_right_padding(left, 16)["input_ids"].shape == (3, 48)


def test_cut_batch_has_the_same_loss_and_gradient():
    model = Qwen25VL(tiny(), nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    batch = _right_padded([11, 26, 7, 19])

    def loss(p, b):
        s, n, _ = sft_loss(nnx.merge(graphdef, p), jax.tree.map(jnp.asarray, b))
        return s / n

    full = jax.value_and_grad(loss)(params, batch)
    cut_batch = trim_right_padding(batch, 8)
    assert cut_batch["input_ids"].shape[1] == 32
    cut = jax.value_and_grad(loss)(params, cut_batch)
    np.testing.assert_allclose(float(cut[0]), float(full[0]), rtol=1e-6)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-7), cut[1], full[1]
    )
