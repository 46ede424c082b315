"""LoRA adapters (dmx_jax.model.lora): fresh adapters give the base's logits exactly; only adapters train (no
optimizer state for the base); the merged export and the PEFT folder both give transformers / peft the adapted
model's logits; a PEFT folder loads back; the GRPO reference with adapters off is the base; a checkpoint round trip
keeps adapters and their optimizer state."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from dmx_jax.hf import load_adapter, load_pretrained, read_config, save_adapter, save_pretrained
from dmx_jax.model import Qwen25VL, tiny
from dmx_jax.model.lora import LoraConfig, adapters_of, disable_adapters, is_adapter, merge_adapters
from dmx_jax.sharding.rules import path_to_str
from dmx_jax.training.checkpoint import Checkpointer, abstract_like
from dmx_jax.training.grpo import GRPOLearner
from dmx_jax.training.grpo_loss import GRPOConfig
from dmx_jax.training.optim import OptimConfig, Trainable, make_optimizer
from dmx_jax.training.rl_vlm import make_policy_logprob
from dmx_jax.training.rollout import Reference, Sampler
from dmx_jax.training.state import init_train_state
from dmx_jax.training.step import make_train_step
from tests.helpers import hf_reference as R

LORA = LoraConfig(rank=4, alpha=8.0)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A transformers reference model saved as a folder, and its inputs (an image prompt and a text prompt)."""
    ref = R.make_reference("a", seed=1)
    path = tmp_path_factory.mktemp("lora_base")
    ref.save_pretrained(path)
    f = R.processor()(images=[R.gray_image(84, 112, 9)], return_tensors="np")
    ids, mask = R.left_pad([R.prompt_ids(R.image_tokens(f["image_grid_thw"]), [[1, 4], [5, 6]]), [1, 2, 3]])
    return ref, path, (ids, mask, f["pixel_values"], f["image_grid_thw"])


@pytest.fixture(scope="module")
def adapted(base):
    return _with_lora(base[1])


def _with_lora(path, lora=LORA):
    """The base folder loaded with fresh adapters, then every B set to random values (a trained adapter)."""
    cfg = read_config(path)
    model, cfg = load_pretrained(path, config=cfg.replace(text=dataclasses.replace(cfg.text, lora=lora)))
    graphdef, state = nnx.split(model)
    params = nnx.to_pure_dict(state)
    leaves, tree = jax.tree_util.tree_flatten_with_path(params)
    keys = jax.random.split(jax.random.key(3), len(leaves))
    trained = [
        0.05 * jax.random.normal(k, x.shape) if path_to_str(p).endswith("lora_b") else x
        for (p, x), k in zip(leaves, keys)
    ]
    return graphdef, params, jax.tree_util.tree_unflatten(jax.tree.structure(params), trained), cfg


def _logits(graphdef, params, inputs, jit=True):
    ids, mask, pv, grid = inputs  # host inputs: only the parameters are traced
    run = lambda p: nnx.merge(graphdef, p)(ids, pixel_values=pv, image_grid_thw=grid, attention_mask=mask)
    return np.asarray((jax.jit(run) if jit else run)(params))


def test_fresh_adapters_give_the_base_logits_exactly_and_disabled_ones_too(base, adapted):
    ref, path, inputs = base
    plain, _ = load_pretrained(path)
    graphdef, fresh, trained, _ = adapted
    want = np.asarray(plain(inputs[0], pixel_values=inputs[2], image_grid_thw=inputs[3], attention_mask=inputs[1]))
    np.testing.assert_array_equal(_logits(graphdef, fresh, inputs, jit=False), want)  # op by op, as `plain`
    np.testing.assert_array_equal(_logits(graphdef, disable_adapters(trained), inputs, jit=False), want)
    assert float(np.abs(_logits(graphdef, trained, inputs) - want).max()) > 1e-3  # trained adapters matter


def test_merged_export_gives_transformers_the_adapted_logits(base, adapted, tmp_path):
    from transformers import Qwen2_5_VLForConditionalGeneration  # noqa: PLC0415 heavy

    _, path, inputs = base
    graphdef, _, trained, cfg = adapted
    save_pretrained(trained, tmp_path / "merged", config=cfg)
    back = Qwen2_5_VLForConditionalGeneration.from_pretrained(tmp_path / "merged", attn_implementation="eager").eval()
    ids, mask, pv, grid = inputs
    got = R.reference_logits(back, ids, mask, pv, grid)
    want = _logits(graphdef, trained, inputs)
    assert float(np.abs(got - want)[mask.astype(bool)].max()) <= 1e-4
    assert not any("lora" in k for k in back.state_dict())


def test_peft_folder_loads_in_peft_with_the_adapted_logits_and_back_into_dmx(base, adapted, tmp_path):
    peft = pytest.importorskip("peft")
    _, path, inputs = base
    graphdef, _, trained, cfg = adapted
    save_adapter(trained, cfg, tmp_path / "adapter", base_model=str(path))
    ref = R.make_reference("a", seed=1)  # the same base weights as the folder
    model = peft.PeftModel.from_pretrained(ref, tmp_path / "adapter").eval()
    wrapped = [n for n, _ in model.named_modules() if n.endswith(".lora_A")]
    assert len(wrapped) == len(LORA.targets) * cfg.text.num_hidden_layers  # the decoder's only
    assert not any("visual" in n for n in wrapped)
    ids, mask, pv, grid = inputs
    got = R.reference_logits(model, ids, mask, pv, grid)
    want = _logits(graphdef, trained, inputs)
    assert float(np.abs(got - want)[mask.astype(bool)].max()) <= 1e-4
    plain, plain_cfg = load_pretrained(path)
    params, lcfg = load_adapter(nnx.to_pure_dict(nnx.state(plain, nnx.Param)), plain_cfg, tmp_path / "adapter")
    assert lcfg.text.lora == LORA
    for (p, a), (_, b) in zip(*(jax.tree_util.tree_leaves_with_path(t) for t in (trained, params))):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=0, atol=0, err_msg=path_to_str(p))


@pytest.mark.slow
def test_only_adapters_train_and_the_base_has_no_optimizer_state(base, adapted):
    _, path, inputs = base
    graphdef, _, fresh, _ = adapted  # B != 0, so A takes a gradient too
    tx = make_optimizer(
        OptimConfig(learning_rate=1e-2, warmup_steps=0, schedule="constant"), trainable=Trainable(adapters_only=True)
    )
    opt_state = tx.init(fresh)
    adapter_size = sum(x.size for p, x in jax.tree_util.tree_leaves_with_path(fresh) if is_adapter(path_to_str(p)))
    moments = sum(x.size for x in jax.tree.leaves(opt_state) if x.ndim > 0)
    assert moments == 2 * adapter_size  # Adam's m and v for the adapters alone
    ids, mask, pv, grid = inputs

    def loss(params):
        logits = nnx.merge(graphdef, params)(ids, pixel_values=pv, image_grid_thw=grid, attention_mask=mask)
        return jnp.mean(jax.nn.logsumexp(logits, -1) - logits[..., 7])

    grads = jax.jit(jax.grad(loss))(fresh)
    updates, _ = tx.update(grads, opt_state, fresh)
    new = optax.apply_updates(fresh, updates)
    for p, a, b in zip(*zip(*jax.tree_util.tree_leaves_with_path(fresh)), jax.tree.leaves(new)):
        moved = float(jnp.abs(b - a).max())
        assert (moved > 0) == is_adapter(path_to_str(p)), path_to_str(p)


def test_merge_equals_the_adapter_forward_in_the_model_frame(base, adapted):
    _, path, inputs = base
    graphdef, _, trained, cfg = adapted
    plain_graphdef = nnx.split(load_pretrained(path)[0])[0]
    merged = merge_adapters(trained, cfg.text.lora)
    assert not any(is_adapter(path_to_str(p)) for p, _ in jax.tree_util.tree_leaves_with_path(merged))
    np.testing.assert_allclose(_logits(plain_graphdef, merged, inputs), _logits(graphdef, trained, inputs), atol=1e-4)


def _lora_model():
    """(base config, graphdef, params) of the tiny model with LORA adapters."""
    cfg = tiny()
    lcfg = cfg.replace(text=dataclasses.replace(cfg.text, lora=LORA))
    graphdef, state = nnx.split(Qwen25VL(lcfg, nnx.Rngs(0)))
    return cfg, graphdef, nnx.to_pure_dict(state)


def _bump_adapters(params, by: float):
    return jax.tree_util.tree_map_with_path(lambda p, x: x + by if path_to_str(p).endswith("lora_b") else x, params)


def _reference_learner(graphdef, reference: Reference):
    """(a GRPO learner with a KL term and `reference`, its log-prob function)."""
    algo = GRPOConfig(group_size=2, max_new_tokens=4, kl_coef=0.05)
    logprob = make_policy_logprob(algo)
    learner = GRPOLearner(
        graphdef,
        algo,
        optax.sgd(0.1),
        sampler=Sampler(None, 2, ()),
        reward_fn=None,
        logprob=logprob,
        reference=reference,
    )
    return learner, logprob


def _completion_inputs(seed: int, t: int = 6, tn: int = 4) -> dict:
    """Two text-only prompts of t tokens and their tn-token completions."""
    rng = np.random.default_rng(seed)
    return {
        "input_ids": rng.integers(10, 900, (2, t)).astype(np.int32),
        "attention_mask": np.ones((2, t), np.int32),
        "positions": np.broadcast_to(np.arange(t, dtype=np.int32), (2, 3, t)).copy(),
        "deltas": np.zeros((2, 1), np.int32),
        "completion": rng.integers(10, 900, (2, tn)).astype(np.int32),
        "completion_mask": np.ones((2, tn), np.float32),
    }


def test_grpo_reference_is_the_base_with_adapters_off():
    """Reference(adapters_off=True): no reference copy; the reference log-probs are the base model's (adapters
    zeroed)."""
    cfg, graphdef, params = _lora_model()
    trained = _bump_adapters(params, 0.1)
    learner, logprob = _reference_learner(graphdef, Reference(adapters_off=True))
    assert learner.ref_params is None
    inputs = _completion_inputs(0)
    got = learner._logp_ref(trained, inputs, None)
    base_graphdef, base_state = nnx.split(Qwen25VL(cfg, nnx.Rngs(0)))
    want, _ = logprob(nnx.merge(base_graphdef, base_state), inputs)
    policy, _ = logprob(nnx.merge(graphdef, trained), inputs)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6)
    assert float(jnp.abs(policy - want).max()) > 1e-3


def test_checkpoint_round_trip_keeps_adapters_and_their_optimizer_state(adapted, tmp_path):
    _, _, trained, _ = adapted
    tx = make_optimizer(OptimConfig(learning_rate=1e-2), trainable=Trainable(adapters_only=True))
    state = init_train_state(trained, tx)
    grads = jax.tree.map(jnp.ones_like, trained)
    updates, opt = tx.update(grads, state.opt_state, trained)
    state = state.replace(params=optax.apply_updates(trained, updates), opt_state=opt, step=state.step + 1)
    ck = Checkpointer(tmp_path / "ckpt", save_every=1, async_save=False)
    ck.save(1, state, force=True)
    ck.wait()
    back, _, step = ck.restore(abstract_like(state))
    assert step == 1
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(back)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_lora_config_is_checked():
    for bad, match in (
        (dict(rank=-1), "rank"),
        (dict(rank=4, targets=("q", "qkv")), "targets"),
        (dict(rank=4, alpha=0.0), "alpha"),
    ):
        with pytest.raises(ValueError, match=match):
            LoraConfig(**bad)


def test_train_step_differentiates_the_adapters_alone_with_the_same_update(base, adapted):
    """With adapters the train step takes gradients of the adapters only (the frozen base gets zeros without being
    differentiated, so no base gradient or accumulator exists: the accumulation carry holds adapter-sized arrays
    alone) and makes exactly the update of the full-gradient step."""
    _, _, inputs = base
    graphdef, _, fresh, _ = adapted
    ids, mask, pv, grid = inputs
    batch = {"weight": jnp.array([1.0, 0.5])}  # two rows (two micro-batches below) weighting one loss

    def loss_fn(model, b, rng):  # the prompt is a constant: the model's call lays out positions on the host
        logits = model(ids, pixel_values=pv, image_grid_thw=grid, attention_mask=mask)
        return jnp.sum(jax.nn.logsumexp(logits, -1) - logits[..., 7]) * jnp.sum(b["weight"]), jnp.float32(1.0), {}

    tx = make_optimizer(
        OptimConfig(learning_rate=1e-2, warmup_steps=0, schedule="constant"), trainable=Trainable(adapters_only=True)
    )
    state = init_train_state(fresh, tx)
    everything = Trainable()
    steps = {only: make_train_step(graphdef, loss_fn, tx, grad_accum=1, trainable=only) for only in (None, everything)}
    (new_a, m_a), (new_b, m_b) = (jax.jit(s)(state, batch) for s in steps.values())
    assert float(m_a["loss"]) == pytest.approx(float(m_b["loss"]), rel=1e-6)
    for a, b in zip(jax.tree.leaves(new_a.params), jax.tree.leaves(new_b.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
    adapter_size = sum(x.size for p, x in jax.tree_util.tree_leaves_with_path(fresh) if is_adapter(path_to_str(p)))

    def carry_size(only):  # elements carried by the gradient-accumulation scan (2 micro-batches)
        jaxpr = jax.make_jaxpr(make_train_step(graphdef, loss_fn, tx, grad_accum=2, trainable=only))(state, batch)
        scan = next(e for e in jaxpr.jaxpr.eqns if e.primitive.name == "scan")
        return sum(v.aval.size for v in scan.outvars[: scan.params["num_carry"]])

    assert carry_size(None) == adapter_size + 2  # adapter gradients, loss and token count
    assert carry_size(everything) > 10 * adapter_size


def test_a_frozen_tower_in_full_fine_tuning_is_not_differentiated(base):
    """Full fine-tuning with the vision tower frozen (StageConfig.frozen / vision_lr=0): the step differentiates the
    rest only (the accumulation carry holds no vision-sized gradient) and makes the same update as differentiating
    everything and letting the optimizer drop the tower's gradients."""
    _, path, (ids, mask, pv, grid) = base
    model, _ = load_pretrained(path)
    graphdef, state = nnx.split(model)
    params = nnx.to_pure_dict(state)
    batch = {"weight": jnp.array([1.0, 0.5])}

    def loss_fn(model, b, rng):
        logits = model(ids, pixel_values=pv, image_grid_thw=grid, attention_mask=mask)
        return jnp.sum(jax.nn.logsumexp(logits, -1) - logits[..., 7]) * jnp.sum(b["weight"]), jnp.float32(1.0), {}

    frozen = Trainable(frozen=("vision",))
    tx = make_optimizer(OptimConfig(learning_rate=1e-2, warmup_steps=0, schedule="constant"), trainable=frozen)
    state = init_train_state(params, tx)
    (new_a, _), (new_b, _) = (
        jax.jit(make_train_step(graphdef, loss_fn, tx, trainable=t))(state, batch) for t in (frozen, Trainable())
    )
    for (p, a), b in zip(jax.tree_util.tree_leaves_with_path(new_a.params), jax.tree.leaves(new_b.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7, err_msg=path_to_str(p))
    vision_size = sum(x.size for x in jax.tree.leaves(params["vision"]))
    total = sum(x.size for x in jax.tree.leaves(params))

    def carry_size(trainable):
        jaxpr = jax.make_jaxpr(make_train_step(graphdef, loss_fn, tx, grad_accum=2, trainable=trainable))(state, batch)
        scan = next(e for e in jaxpr.jaxpr.eqns if e.primitive.name == "scan")
        return sum(v.aval.size for v in scan.outvars[: scan.params["num_carry"]])

    assert carry_size(frozen) == total - vision_size + 2  # the text side's gradients, loss, token count
    assert carry_size(Trainable()) == total + 2


def test_grpo_reference_is_the_policy_the_stage_started_from():
    """Reference(adapters=adapters_of(start)): the reference log-probs are the starting policy's (base + the
    adapters SFT and cold start trained), from the shared base and a copy of the adapters alone, however far the
    policy's adapters have moved since; not the base's (adapters off), which KL would pull the policy back to."""
    _, graphdef, params = _lora_model()
    start = _bump_adapters(params, 0.1)  # adapters trained before GRPO
    moved = _bump_adapters(start, 0.05)  # the policy after some GRPO updates
    learner, logprob = _reference_learner(graphdef, Reference(adapters=adapters_of(start)))
    assert learner.ref_params is None and learner.programs.reference_kind == "adapters"
    copied = jax.tree.leaves(learner.ref_adapters)
    assert len(copied) == 2 * len(LORA.targets) and all(a is not b for a, b in zip(copied, jax.tree.leaves(start)))
    inputs = _completion_inputs(1)
    got = learner._logp_ref(moved, inputs, learner.ref_adapters)
    want, _ = logprob(nnx.merge(graphdef, start), inputs)
    policy, _ = logprob(nnx.merge(graphdef, moved), inputs)
    base, _ = logprob(nnx.merge(graphdef, disable_adapters(start)), inputs)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6)
    assert float(jnp.abs(policy - want).max()) > 1e-3 and float(jnp.abs(base - want).max()) > 1e-3
