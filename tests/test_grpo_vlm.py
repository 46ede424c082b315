"""GRPO with images through the real tiny Qwen2.5-VL: sampler log-probs == trainer log-probs (drift ~0),
per-example image batches work end to end, and a few updates raise a toy reward."""

import pickle

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.experimental import multihost_utils

from dmx_jax.model import ModelConfig, Qwen25VL, rope_index, tiny, vision_inputs
from dmx_jax.sharding import MeshConfig, make_mesh, process_slice
from dmx_jax.training.grpo import GRPOLearner, sampling_shardings
from dmx_jax.training.grpo_loss import GRPOConfig
from dmx_jax.training.rl_vlm import completion_logprobs, make_sampler
from dmx_jax.training.rollout import PolicyLogprob, Reference
from dmx_jax.training.state import init_train_state
from dmx_jax.training.step import state_shardings
from experiments.stages import place_batch
from tests.helpers import hf_reference as R
from tests.helpers.processes import run_workers


def _prompt_batch(cfg: ModelConfig, n=2, patch_budget=64):
    """Per-example images padded to a patch budget, left-padded prompts, batch-major leaves."""
    proc = R.processor()
    rows, pvs, vins, grids = [], [], [], []
    for i in range(n):
        f = proc(images=[R.gray_image(56 + 28 * i, 84, 10 + i)], return_tensors="np")
        pv, grid = f["pixel_values"], f["image_grid_thw"]
        pvs.append(np.pad(pv, ((0, patch_budget - pv.shape[0]), (0, 0))))
        vins.append(vision_inputs(grid, cfg.vision, pad_to=patch_budget))
        grids.append(grid)
        n_tok = R.image_tokens(grid)
        image = [cfg.vision_start_token_id] + [cfg.image_token_id] * n_tok[0] + [cfg.vision_end_token_id]
        rows.append([1] + image + [5 + i] * (i + 1))
    ids, mask = R.left_pad(rows)
    pos, deltas = [], []
    for r in range(n):
        p, d = rope_index(ids[r : r + 1], grids[r], mask[r : r + 1], image_token_id=cfg.image_token_id)
        pos.append(p[:, 0]), deltas.append(d[0])
    return {
        "input_ids": ids.astype(np.int32),
        "attention_mask": mask.astype(np.int32),
        "positions": np.stack(pos).astype(np.int32),
        "deltas": np.stack(deltas).astype(np.int32),
        "pixel_values": np.stack(pvs),
        "vision_inputs": jax.tree.map(lambda *x: np.stack(x), *vins),
    }


@pytest.mark.slow
def test_vlm_grpo_drift_and_reward():
    cfg = tiny()
    model = Qwen25VL(cfg, nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    params = nnx.to_pure_dict(state)
    algo = GRPOConfig(group_size=8, max_new_tokens=6, temperature=1.0, kl_coef=0.0)

    def reward_fn(tokens, mask, prompts):  # dense toy reward: share of tokens from the lowest 1/8 of the vocab
        return {"overall": jnp.mean((tokens < cfg.text.vocab_size // 8).astype(jnp.float32) * mask, axis=1)}

    tx = optax.adam(6e-2)
    learner = GRPOLearner(
        graphdef,
        algo,
        tx,
        sampler=make_sampler(graphdef, algo, stop_token_ids=(), pad_id=0),
        reward_fn=reward_fn,
        logprob=PolicyLogprob(completion_logprobs),
        seed=0,
    )
    st = init_train_state(params, tx)
    prompts = _prompt_batch(cfg)
    hist = []
    for _ in range(8):
        st, m = learner.step(st, prompts)
        hist.append(m)
    assert max(h["drift/logp_abs_max"] for h in hist) < 1e-4
    phases = ("rollout", "reward", "logprob", "update")
    assert all(h[f"time/{p}_s"] > 0 for h in hist for p in phases)  # the step's time breakdown is logged
    rewards = [h["reward/overall"] for h in hist]
    assert np.mean(rewards[-3:]) > np.mean(rewards[:3]) + 0.1, rewards


def _two_steps(mesh_shape=None, per_process=False, sample_layout=False):
    """Two GRPO steps on the tiny model; per_process: this process holds only its share of the 4 prompts."""
    cfg = tiny()
    graphdef, state = nnx.split(Qwen25VL(cfg, nnx.Rngs(0)))
    algo = GRPOConfig(group_size=4, max_new_tokens=5, temperature=1.0, kl_coef=0.04)

    def reward_fn(tokens, mask, prompts):
        return {"overall": jnp.mean((tokens < cfg.text.vocab_size // 8).astype(jnp.float32) * mask, axis=1)}

    tx = optax.sgd(1.0)  # not Adam: its update of a near-zero gradient is +-lr whatever the round-off
    start = jax.tree.map(np.array, nnx.to_pure_dict(state))  # host copy: the update donates the state
    st = init_train_state(nnx.to_pure_dict(state), tx)
    place, sample_shardings = None, None
    if mesh_shape:
        mesh = make_mesh(MeshConfig(*mesh_shape))
        st = jax.device_put(st, state_shardings(st, mesh))
        place = lambda rep: place_batch(rep, mesh, per_process=per_process)
        if sample_layout:
            sample_shardings = sampling_shardings(st.params, mesh)
    learner = GRPOLearner(
        graphdef,
        algo,
        tx,
        sampler=make_sampler(graphdef, algo, stop_token_ids=(), pad_id=0),
        reward_fn=reward_fn,
        logprob=PolicyLogprob(completion_logprobs),
        reference=Reference(st.params),
        seed=0,
        place=place,
        sample_shardings=sample_shardings,
    )
    prompts = _prompt_batch(cfg, n=4)
    if per_process:
        prompts = jax.tree.map(lambda x: x[process_slice(4)], prompts)
    hist = []
    for _ in range(2):
        st, m = learner.step(st, prompts)
        hist.append(m)
    moved = jax.tree.map(
        lambda a, b: np.asarray(multihost_utils.process_allgather(a, tiled=True)) - b, st.params, start
    )
    return hist, moved


@pytest.fixture(scope="module")
def one_device_steps():
    return _two_steps()


def _assert_same_steps(ref, got):
    """Per-step metrics to 1e-4 and parameter updates to 1e-3 of the largest update (which must be non-zero)."""
    (ref_hist, ref_moved), (hist, moved) = ref, got
    for a, b in zip(ref_hist, hist):
        for k in ("reward/overall", "loss", "kl", "drift/logp_abs_max", "completion_len_mean"):
            np.testing.assert_allclose(b[k], a[k], rtol=1e-4, atol=1e-6, err_msg=k)
    scale = max(float(np.abs(x).max()) for x in jax.tree.leaves(ref_moved))
    assert scale > 1e-4  # the updates did move the weights
    for a, b in zip(jax.tree.leaves(ref_moved), jax.tree.leaves(moved)):
        np.testing.assert_allclose(b, a, atol=1e-3 * scale)


@pytest.mark.slow
def test_sharded_rollouts_equal_one_device(one_device_steps):
    """Prompts placed over a (2,2,2) mesh: sampling, rewards, log-probs and updates run data-parallel and give
    the one-device numbers (same random draws: threefry is partitionable)."""
    _assert_same_steps(one_device_steps, _two_steps((2, 2, 2)))


@pytest.mark.slow
def test_sampling_layout_rollouts_equal_one_device(one_device_steps):
    """Decoding with the weights re-laid out by SAMPLE_RULES (no FSDP on weights, gathered once per rollout)
    gives the one-device numbers."""
    _assert_same_steps(one_device_steps, _two_steps((2, 2, 2), sample_layout=True))


@pytest.mark.slow
def test_two_process_rollouts_equal_one_device(tmp_path, one_device_steps):
    """2 CPU processes x 4 devices, mesh (2,2,2), each process holding only its own 2 prompts."""
    out = tmp_path / "grpo.pkl"
    run_workers("tests/helpers/grpo_multihost_worker.py", 2, out, timeout=400)
    _assert_same_steps(one_device_steps, pickle.loads(out.read_bytes()))
