"""M-RoPE positions have one layout per signature: the data pipeline's rows are batch-major [B, 3, T], the model
takes axis-major [3, B, T], and every entry point that takes pipeline arrays converts explicitly. A batch of
exactly 3 rows whose images differ in size gives each row its own positions: batched logits, SFT loss, completion
log-probs and greedy tokens equal those of each row alone (and transformers' logits), for 1, 2, 3 and 5 rows."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from data_pipelines.pipeline.batching import stack_rows
from dmx_jax.hf import save_pretrained
from dmx_jax.model import Qwen25VL, rope_index, tiny, vision_inputs
from dmx_jax.processing.image import preprocess_images
from dmx_jax.sampling import generate
from dmx_jax.training.grpo_loss import GRPOConfig
from dmx_jax.training.rl_vlm import completion_logprobs, make_sampler
from dmx_jax.training.sft import sft_loss

pytestmark = pytest.mark.slow  # ~40 s of compiles (5 rows alone, 4 batch sizes) on 2 cores

SIZES = ((56, 84), (84, 56), (112, 84), (56, 112), (84, 84))  # (h, w) per row: a different image grid in each
PIX = dict(min_pixels=56 * 56, max_pixels=112 * 112)
NEW, TOL, HF_TOL = 4, 1e-5, 1e-4


@pytest.fixture(scope="module")
def model():
    """The tiny preset with its random weights perturbed (+ N(0, 0.08^2)), so that positions move the logits."""
    graphdef, state = nnx.split(Qwen25VL(tiny(), nnx.Rngs(0)))
    leaves, tree = jax.tree.flatten(nnx.to_pure_dict(state))
    keys = jax.random.split(jax.random.key(1), len(leaves))
    nnx.replace_by_pure_dict(
        state, tree.unflatten([x + 0.08 * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])
    )
    return nnx.merge(graphdef, state)


def _row(cfg, b: int) -> dict:
    """Row b unpadded: ids [T_b], pixel_values [P_b, F], grid [1, 3]; its text length differs by row too."""
    h, w = SIZES[b]
    img = np.random.default_rng(b).random((h, w)).astype(np.float32)
    v = cfg.vision
    f = preprocess_images(
        [img],
        patch_size=v.patch_size,
        temporal_patch_size=v.temporal_patch_size,
        merge_size=v.spatial_merge_size,
        **PIX,
    )
    n = int(np.prod(f["image_grid_thw"][0])) // v.spatial_merge_size**2
    ids = [1, 10 + b, cfg.vision_start_token_id] + [cfg.image_token_id] * n + [cfg.vision_end_token_id]
    return {
        "ids": np.asarray(ids + [20 + k for k in range(b + 1)], np.int32),
        "pv": f["pixel_values"],
        "grid": f["image_grid_thw"],
    }


@pytest.fixture(scope="module")
def rows(model):
    """(unpadded rows, all rows left-padded to one (T, P) and stacked as the data pipeline does (stack_rows):
    every leaf batch-major, positions [B, 3, T], deltas [B, 1], pixel_values [B, P, F], plus a completion [B, NEW])."""
    cfg = model.cfg
    raw = [_row(cfg, b) for b in range(len(SIZES))]
    t, p = max(len(r["ids"]) for r in raw), max(len(r["pv"]) for r in raw)
    encoded = []
    for k, r in enumerate(raw):
        pad = t - len(r["ids"])
        ids = np.concatenate([np.full(pad, cfg.pad_token_id, np.int32), r["ids"]])
        mask = (np.arange(t) >= pad).astype(np.int32)
        pos, delta = rope_index(
            ids[None],
            r["grid"],
            mask[None],
            spatial_merge_size=cfg.vision.spatial_merge_size,
            image_token_id=cfg.image_token_id,
        )
        encoded.append(
            {
                "input_ids": ids,
                "attention_mask": mask,
                "loss_mask": mask,
                "positions": pos[:, 0],
                "deltas": delta[0],
                "pixel_values": np.pad(r["pv"], ((0, p - len(r["pv"])), (0, 0))),
                "vision_inputs": vision_inputs(r["grid"], cfg.vision, pad_to=p),
                "meta": {"example_id": k},
            }
        )
    arrays, _ = stack_rows(encoded)
    arrays["completion"] = np.random.default_rng(3).integers(30, 900, (len(raw), NEW)).astype(np.int32)
    return raw, arrays


@functools.partial(jax.jit, static_argnums=0)
def _forward(graphdef, params, arrays: dict) -> dict:
    """Logits [B, T, V] (positions swapped once to [3, B, T]), SFT loss sum and completion log-probs [B, NEW]."""
    model = nnx.merge(graphdef, params)
    logits, _ = model.forward(
        arrays["input_ids"],
        jnp.swapaxes(arrays["positions"], 0, 1),
        arrays["attention_mask"],
        arrays["pixel_values"],
        arrays["vision_inputs"],
    )
    loss, _, _ = sft_loss(model, arrays)
    return {"logits": logits, "loss": loss, "logprobs": completion_logprobs(model, arrays)}


def _outputs(model, arrays: dict) -> dict:
    """Every entry point on one batch of pipeline arrays, as numpy."""
    graphdef, state = nnx.split(model)
    params = nnx.to_pure_dict(state)
    arrays = jax.tree.map(jnp.asarray, arrays)
    out = jax.tree.map(np.asarray, _forward(graphdef, params, arrays))
    prompts = {k: v for k, v in arrays.items() if k not in ("loss_mask", "completion")}
    out["tokens"] = np.asarray(generate(model, **prompts, max_new_tokens=NEW))
    greedy = make_sampler(
        graphdef, GRPOConfig(group_size=2, max_new_tokens=NEW), stop_token_ids=(), pad_id=0, greedy=True
    )
    sampled, _, _ = greedy.sample(params, prompts, jax.random.key(0))
    out["sampled"] = np.asarray(sampled)[::2]  # the first of each group of 2 greedy samples
    return out


def _take(arrays: dict, rows) -> dict:
    return jax.tree.map(lambda x: x[rows], arrays)


@pytest.fixture(scope="module")
def alone(model, rows):
    """Each row's outputs with the row alone (a batch of one)."""
    _, arrays = rows
    return [_outputs(model, _take(arrays, slice(b, b + 1))) for b in range(len(SIZES))]


@pytest.fixture(scope="module")
def batched(model, rows):
    """n -> the outputs of the batch of the first n rows (computed once)."""
    cache: dict = {}

    def get(n: int) -> dict:
        if n not in cache:
            cache[n] = _outputs(model, _take(rows[1], slice(0, n)))
        return cache[n]

    return get


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_batched_logits_equal_each_row_alone(alone, batched, n):
    """Logits, SFT loss, completion log-probs (the GRPO trainer's), generate's and the GRPO sampler's greedy tokens
    of a batch of n pipeline rows equal those of each row alone; with 3 rows a shape guess reads the batch-major
    positions as axis-major and hands rows each other's positions."""
    got = batched(n)
    for b in range(n):
        np.testing.assert_allclose(got["logits"][b], alone[b]["logits"][0], atol=TOL, rtol=0, err_msg=f"row {b}")
        np.testing.assert_allclose(got["logprobs"][b], alone[b]["logprobs"][0], atol=TOL, rtol=0, err_msg=f"row {b}")
        for k in ("tokens", "sampled"):
            np.testing.assert_array_equal(got[k][b], alone[b][k][0], err_msg=f"{k}, row {b}")
    np.testing.assert_allclose(got["loss"], sum(float(a["loss"]) for a in alone[:n]), rtol=TOL)


@pytest.fixture(scope="module")
def reference(model, tmp_path_factory):
    pytest.importorskip("transformers")
    from transformers import Qwen2_5_VLForConditionalGeneration  # noqa: PLC0415 optional

    folder = tmp_path_factory.mktemp("tiny_hf")
    save_pretrained(model, folder)
    return Qwen2_5_VLForConditionalGeneration.from_pretrained(folder, attn_implementation="eager").eval()


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_batched_logits_equal_transformers(model, rows, alone, batched, reference, n):
    """The same rows through transformers (flat pixel layout, its own positions): the rows' logits."""
    import torch  # noqa: PLC0415 heavy

    raw, arrays = rows
    ids, mask = (torch.as_tensor(arrays[k][:n].astype(np.int64)) for k in ("input_ids", "attention_mask"))
    with torch.no_grad():
        want = (
            reference(
                input_ids=ids,
                attention_mask=mask,
                pixel_values=torch.as_tensor(np.concatenate([r["pv"] for r in raw[:n]])),
                image_grid_thw=torch.as_tensor(np.concatenate([r["grid"] for r in raw[:n]])),
                mm_token_type_ids=(ids == model.cfg.image_token_id).int(),
            )
            .logits.float()
            .numpy()
        )
    valid = arrays["attention_mask"][:n].astype(bool)
    got = np.stack([a["logits"][0] for a in alone[:n]])
    assert float(np.abs(got - want)[valid].max()) <= HF_TOL
    assert float(np.abs(batched(n)["logits"] - want)[valid].max()) <= HF_TOL
