"""A toy NNX language model whose parameter paths follow the sharding table (text.*, lm_head.*).

Used where a test exercises training machinery (steps, meshes, processes, checkpoints) independent of
the Qwen2.5-VL architecture.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dmx_jax.training.loss import cross_entropy_from_hidden, shift_targets


class _Param(nnx.Module):
    def __init__(self, name, shape, rngs, scale=0.2):
        setattr(self, name, nnx.Param(jax.random.normal(rngs.params(), shape) * scale))


class _MLP(nnx.Module):
    def __init__(self, L, D, F, rngs):
        self.up = _Param("kernel", (L, D, F), rngs)
        self.down = _Param("kernel", (L, F, D), rngs)


class _Layers(nnx.Module):
    def __init__(self, L, D, F, rngs):
        self.mlp = _MLP(L, D, F, rngs)


class _Text(nnx.Module):
    def __init__(self, V, L, D, F, rngs):
        self.embed = _Param("embedding", (V, D), rngs, 1.0)
        self.layers = _Layers(L, D, F, rngs)


class ToyLM(nnx.Module):
    def __init__(self, V=32, L=2, D=16, F=32, seed=0):
        rngs = nnx.Rngs(seed)
        self.text = _Text(V, L, D, F, rngs)
        self.lm_head = _Param("kernel", (D, V), rngs)

    def hidden(self, ids):
        h = self.text.embed.embedding[...][ids]
        up, down = self.text.layers.mlp.up.kernel[...], self.text.layers.mlp.down.kernel[...]

        def layer(h, w):
            return h + jnp.tanh(h @ w[0]) @ w[1], None

        h, _ = jax.lax.scan(layer, h, (up, down))
        return h


def toy_loss(model, batch, rng):
    targets, weights = shift_targets(batch["input_ids"], batch["loss_mask"])
    s, c = cross_entropy_from_hidden(model.hidden(batch["input_ids"]), model.lm_head.kernel[...], targets, weights)
    return s, c, {}


def toy_batches(n, batch_size=8, seq=12, vocab=32, seed=0):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        ids = rng.integers(0, vocab, size=(batch_size, seq)).astype(np.int32)
        mask = (rng.random((batch_size, seq)) > 0.2).astype(np.int32)
        yield {"input_ids": ids, "loss_mask": mask}
