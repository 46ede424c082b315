"""GRPO with images through the real tiny Qwen2.5-VL: sampler log-probs == trainer log-probs (drift ~0),
per-example image batches work end to end, and a few updates raise a toy reward."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from dmx_jax.model import ModelConfig, Qwen25VL, rope_index, tiny, vision_inputs
from dmx_jax.training.grpo import GRPOLearner
from dmx_jax.training.grpo_loss import GRPOConfig
from dmx_jax.training.rl_vlm import completion_logprobs, make_sample_fn
from dmx_jax.training.state import init_train_state
from tests.helpers import hf_reference as R


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
        rows.append([1] + [cfg.vision_start_token_id] + [cfg.image_token_id] * n_tok[0] + [cfg.vision_end_token_id] + [5 + i] * (i + 1))
    ids, mask = R.left_pad(rows)
    pos, deltas = [], []
    for r in range(n):
        p, d = rope_index(ids[r:r + 1], grids[r], mask[r:r + 1], image_token_id=cfg.image_token_id)
        pos.append(p[:, 0]), deltas.append(d[0])
    return {"input_ids": ids.astype(np.int32), "attention_mask": mask.astype(np.int32),
            "positions": np.stack(pos).astype(np.int32), "deltas": np.stack(deltas).astype(np.int32),
            "pixel_values": np.stack(pvs), "vision_inputs": jax.tree.map(lambda *x: np.stack(x), *vins)}


def test_vlm_grpo_drift_and_reward():
    cfg = tiny()
    model = Qwen25VL(cfg, nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    params = nnx.to_pure_dict(state)
    algo = GRPOConfig(group_size=8, max_new_tokens=6, temperature=1.0, kl_coef=0.0)
    def reward_fn(tokens, mask, prompts):  # dense toy reward: share of tokens from the lowest 1/8 of the vocab
        return {"overall": jnp.mean((tokens < cfg.text.vocab_size // 8).astype(jnp.float32) * mask, axis=1)}

    tx = optax.adam(6e-2)
    learner = GRPOLearner(graphdef, algo, tx, sample_fn=make_sample_fn(graphdef, algo, stop_token_ids=(), pad_id=0),
                          reward_fn=reward_fn, logprob_fn=completion_logprobs, seed=0)
    st = init_train_state(params, tx)
    prompts = _prompt_batch(cfg)
    hist = []
    for _ in range(8):
        st, m = learner.step(st, prompts)
        hist.append(m)
    assert max(h["drift/logp_abs_max"] for h in hist) < 1e-4
    phases = ("rollout", "reward", "logprob", "update")
    assert all(h[f"time/{p}_s"] > 0 for h in hist for p in phases)       # the step's time breakdown is logged
    rewards = [h["reward/overall"] for h in hist]
    assert np.mean(rewards[-3:]) > np.mean(rewards[:3]) + 0.1, rewards
