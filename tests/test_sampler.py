"""Sampler: greedy tokens equal transformers' generate with images (left-padded batch); returned
log-probs equal the trainer's recomputed log-probs; stop tokens end rows."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from dmx_jax.hf import load_pretrained
from dmx_jax.model import rope_index, vision_inputs
from dmx_jax.sampling import completion_positions, generate
from tests.helpers import hf_reference as R

NEW = 12


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    ref = R.make_reference("a", seed=3)
    path = tmp_path_factory.mktemp("hf_sampler")
    ref.save_pretrained(path)
    model, cfg = load_pretrained(path)
    f = R.processor()(images=[R.gray_image(84, 112, 1), R.gray_image(56, 56, 2)], return_tensors="np")
    n = R.image_tokens(f["image_grid_thw"])
    rows = [R.prompt_ids(n[:1], [[1, 7, 8], [9, 10, 11]]), R.prompt_ids(n[1:], [[1], [12]])]
    ids, mask = R.left_pad(rows)
    return ref, model, cfg, ids, mask, f["pixel_values"], f["image_grid_thw"]


def test_greedy_equals_transformers_generate(setup):
    ref, model, cfg, ids, mask, pv, grid = setup
    ids_t = torch.as_tensor(ids)
    with torch.no_grad():
        out = ref.generate(
            input_ids=ids_t,
            attention_mask=torch.as_tensor(mask),
            pixel_values=torch.as_tensor(pv),
            image_grid_thw=torch.as_tensor(grid),
            mm_token_type_ids=(ids_t == R.IMAGE).int(),
            max_new_tokens=NEW,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
    want = out[:, ids.shape[1] :].numpy()
    got = np.asarray(
        generate(model, ids, pixel_values=pv, image_grid_thw=grid, attention_mask=mask, max_new_tokens=NEW)
    )
    np.testing.assert_array_equal(got, want)
    # one row with both images, one with none: per-row image packing (rowwise_images) keeps the tokens
    rows2 = [R.prompt_ids(R.image_tokens(grid), [[1, 7], [8], [9, 10]]), [1, 5, 6, 7, 8]]
    ids2, mask2 = R.left_pad(rows2)
    ids2_t = torch.as_tensor(ids2)
    with torch.no_grad():
        out2 = ref.generate(
            input_ids=ids2_t,
            attention_mask=torch.as_tensor(mask2),
            pixel_values=torch.as_tensor(pv),
            image_grid_thw=torch.as_tensor(grid),
            mm_token_type_ids=(ids2_t == R.IMAGE).int(),
            max_new_tokens=NEW,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
    got2 = generate(model, ids2, pixel_values=pv, image_grid_thw=grid, attention_mask=mask2, max_new_tokens=NEW)
    np.testing.assert_array_equal(np.asarray(got2), out2[:, ids2.shape[1] :].numpy())
    # text-only prompts too
    tids, tmask = R.left_pad([[1, 5, 6, 7], [1, 9]])
    with torch.no_grad():
        tout = ref.generate(
            input_ids=torch.as_tensor(tids),
            attention_mask=torch.as_tensor(tmask),
            max_new_tokens=NEW,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
            mm_token_type_ids=torch.zeros_like(torch.as_tensor(tids)),
        )
    np.testing.assert_array_equal(
        np.asarray(generate(model, tids, attention_mask=tmask, max_new_tokens=NEW)), tout[:, tids.shape[1] :].numpy()
    )


def test_logprobs_equal_trainer_recomputation_and_stops(setup):
    _, model, cfg, ids, mask, pv, grid = setup
    tokens, (logps, cmask) = generate(
        model,
        ids,
        pixel_values=pv,
        image_grid_thw=grid,
        attention_mask=mask,
        max_new_tokens=NEW,
        temperature=1.0,
        top_k=20,
        rng=jax.random.key(4),
        return_logprobs=True,
    )
    tokens, logps, cmask = map(np.asarray, (tokens, logps, cmask))
    full = np.concatenate([ids, tokens], axis=1)
    full_mask = np.concatenate([mask, np.ones_like(tokens)], axis=1)
    prompt_pos, deltas = rope_index(ids, grid, mask, image_token_id=R.IMAGE)
    pos = completion_positions(prompt_pos, deltas, NEW, mask)
    # the continuation positions are those of the full sequence as the model would index it from scratch
    # (left padding shifts slots, not positions)
    full_pos, _ = rope_index(full, grid, full_mask, image_token_id=R.IMAGE)
    np.testing.assert_array_equal(np.asarray(pos), full_pos)
    vin = jax.tree.map(jnp.asarray, vision_inputs(grid, cfg.vision))
    logits, _ = model.forward(jnp.asarray(full), jnp.asarray(pos), jnp.asarray(full_mask), jnp.asarray(pv), vin)
    lp = jax.nn.log_softmax(np.asarray(logits)[:, ids.shape[1] - 1 : -1], axis=-1)
    recomputed = np.take_along_axis(np.asarray(lp), tokens[..., None], -1)[..., 0]
    assert float(np.abs(recomputed - logps).max()) <= 1e-5
    # a stop token ends each row: everything after is pad with mask 0
    stop = int(tokens[0, 3])
    t2, (_, m2) = generate(
        model,
        ids,
        pixel_values=pv,
        image_grid_thw=grid,
        attention_mask=mask,
        max_new_tokens=NEW,
        temperature=1.0,
        top_k=20,
        rng=jax.random.key(4),
        stop_token_ids=(stop,),
        return_logprobs=True,
    )
    t2, m2 = np.asarray(t2), np.asarray(m2)
    first = int(np.argmax(t2[0] == stop))
    assert m2[0, : first + 1].all() and not m2[0, first + 1 :].any() and (t2[0, first + 1 :] == 0).all()
