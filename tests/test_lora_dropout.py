"""LoRA dropout (LoraConfig.dropout, PEFT's lora_dropout): inverted dropout on the adapter's input alone, active only
in a forward given a dropout key; without one the forward is the no-dropout model's exactly. The supervised loss
passes its rng as the key; the PEFT folder and the `--set` overrides carry the rate."""

import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dmx_jax.hf import load_adapter, save_adapter
from dmx_jax.hf.adapter import read_adapter_config
from dmx_jax.model import lora
from dmx_jax.model.config import tiny
from dmx_jax.model.lora import LoraConfig, disable_adapters
from dmx_jax.model.qwen2_5_vl import Qwen25VL
from dmx_jax.training.sft import sft_loss
from experiments.configs import ExperimentConfig
from experiments.overrides import ConfigError, apply_overrides, config_from_dict, to_dict

RATE = 0.25


def _config(rate: float):
    cfg = tiny()
    return cfg.replace(text=dataclasses.replace(cfg.text, lora=LoraConfig(rank=4, alpha=8.0, dropout=rate)))


def _random(path, x, rng):
    """A leaf of random parameters: norm scales 1, adapters' B N(0, 0.05^2) (a trained adapter), else N(0, 0.02^2)
    (A: N(0, 0.1^2))."""
    name = str(getattr(path[-1], "key", path[-1]))
    if name == "scale":
        return np.ones(x.shape, x.dtype)
    std = {"lora_a": 0.1, "lora_b": 0.05}.get(name, 0.02)
    return (std * rng.standard_normal(x.shape)).astype(x.dtype)


@pytest.fixture(scope="module")
def models():
    """A tiny model with rank-4 adapters at dropout 0 and RATE: the same random parameters under two graphdefs,
    [(graphdef, params, cfg)] * 2."""
    out, rng = [], np.random.default_rng(0)
    for rate in (0.0, RATE):
        graphdef, state = nnx.split(nnx.eval_shape(lambda rate=rate: Qwen25VL(_config(rate), nnx.Rngs(0))))
        out.append((graphdef, state, _config(rate)))
    params = jax.tree_util.tree_map_with_path(lambda p, x: _random(p, x, rng), nnx.to_pure_dict(out[0][1]))
    return [(g, params, cfg) for g, _, cfg in out]


def _inputs(b: int = 2, t: int = 12):
    ids = jax.random.randint(jax.random.key(1), (b, t), 3, 1000)
    positions = jnp.broadcast_to(jnp.arange(t), (3, b, t))
    return ids, positions, jnp.ones((b, t), jnp.int32)


@functools.partial(jax.jit, static_argnums=0)
def _logits(graphdef, params, key=None):
    ids, positions, mask = _inputs()
    logits, _ = nnx.merge(graphdef, params).forward(ids, positions, mask, dropout_key=key)
    return logits


def test_without_a_key_dropout_gives_the_no_dropout_logits_exactly(models):
    (g0, p0, _), (g1, p1, _) = models
    jax.tree.map(np.testing.assert_array_equal, p0, p1)  # the rate does not touch the parameters
    want = np.asarray(_logits(g0, p0))
    np.testing.assert_array_equal(np.asarray(_logits(g1, p1)), want)
    np.testing.assert_array_equal(np.asarray(_logits(g0, p0, jax.random.key(5))), want)  # rate 0 ignores a key


def test_with_a_key_dropout_acts_on_the_adapters_alone_and_is_deterministic(models):
    (g0, p0, _), (g1, p1, _) = models
    k = jax.random.key(7)
    plain = np.asarray(_logits(g0, p0))
    dropped = np.asarray(_logits(g1, p1, k))
    assert float(np.abs(dropped - plain).max()) > 1e-4
    np.testing.assert_array_equal(np.asarray(_logits(g1, p1, k)), dropped)
    assert float(np.abs(np.asarray(_logits(g1, p1, jax.random.key(8))) - dropped).max()) > 1e-4
    base = disable_adapters(p1)  # B = 0: only the base path is left
    np.testing.assert_array_equal(np.asarray(_logits(g1, base, k)), np.asarray(_logits(g0, base)))


def test_the_mean_dropped_delta_is_the_plain_delta():
    ka, kb, kx = jax.random.split(jax.random.key(0), 3)
    p = {"lora_a": jax.random.normal(ka, (16, 4)), "lora_b": jax.random.normal(kb, (4, 6))}
    x = jax.random.normal(kx, (3, 16)) + 1.0  # [N, in]
    want = lora.delta(x, p, 1, 2.0)  # [N, out]
    keys = jax.random.split(jax.random.key(1), 4000)
    got = jax.vmap(lambda k: lora.delta(x, p, 1, 2.0, k, 0.5))(keys)  # [K, N, out]
    assert float(jnp.abs(got - want).max()) > 1.0  # the draws do differ
    err = jnp.abs(got.mean(0) - want)
    stderr = got.std(0) / len(keys) ** 0.5
    assert bool(jnp.all(err < 5 * stderr + 1e-4)), (err, stderr)
    np.testing.assert_array_equal(lora.delta(x, p, 1, 2.0, None, 0.5), want)


def test_sft_loss_passes_its_rng_as_the_dropout_key(models):
    g1, p1, _ = models[1]
    ids, positions, mask = _inputs()
    batch = {
        "input_ids": ids,
        "positions": jnp.swapaxes(positions, 0, 1),
        "attention_mask": mask,
        "loss_mask": jnp.ones_like(ids),
    }
    loss = jax.jit(lambda g, p, rng: sft_loss(nnx.merge(g, p), batch, rng)[0], static_argnums=0)
    rng = jax.random.key(3)
    plain = float(loss(g1, p1, None))  # the no-dropout loss: the forward without a key
    assert abs(float(loss(g1, p1, rng)) - plain) > 1e-6


def test_peft_adapter_config_round_trips_the_dropout(models, tmp_path):
    _, p1, cfg = models[1]
    save_adapter(p1, cfg, tmp_path / "adapter")
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["lora_dropout"] == RATE
    assert read_adapter_config(tmp_path / "adapter") == cfg.text.lora
    plain = cfg.replace(text=dataclasses.replace(cfg.text, lora=LoraConfig()))
    _, back = load_adapter(p1, plain, tmp_path / "adapter")
    assert back.text.lora.dropout == RATE


def test_dropout_override_round_trips_and_the_check_names_the_field():
    cfg = apply_overrides(ExperimentConfig(), ["lora.rank=8", "lora.dropout=0.05"])
    assert cfg.lora == LoraConfig(rank=8, dropout=0.05)
    assert config_from_dict(ExperimentConfig(), json.loads(json.dumps(to_dict(cfg)))).lora == cfg.lora
    with pytest.raises(ConfigError, match=r"lora\.dropout"):
        apply_overrides(ExperimentConfig(), ["lora.dropout=1.0"])
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match=r"lora\.dropout must be in \[0, 1\)"):
            LoraConfig(rank=4, dropout=bad)
