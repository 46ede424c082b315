"""One stage runner for every training stage (SFT, cold start, GRPO): optimizer, state, shardings, checkpointer,
resume, signals, final save and the DONE marker live here once; a stage supplies its step and its batches.

    recipe = sft_recipe(graphdef, model_cfg, chunk)          # or grpo_recipe(...)
    params = run_stage(StageSpec("sft", cfg.sft.steps, ...), recipe, stage_dir, params, rows, ctx)
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from data_pipelines.pipeline import stack_rows, trim_right_padding
from dmx_jax.model.lora import adapters_of
from dmx_jax.perf.flops import batch_train_flops
from dmx_jax.rewards.combine import ground_truth_arrays, make_reward_fn
from dmx_jax.rewards.text_bytes import token_bytes_table
from dmx_jax.sampling.generate import stop_token_ids
from dmx_jax.sharding import global_array, process_slice
from dmx_jax.sharding.distributed import replicated_array
from dmx_jax.sharding.rules import batch_spec, path_to_str, tree_shardings
from dmx_jax.training.align import align_optimizer, make_align_loss, stack_align_rows
from dmx_jax.training.checkpoint import Checkpointer
from dmx_jax.training.grpo import GRPOLearner, initial_aux
from dmx_jax.training.loop import LoopConfig, LoopIO, MetricsWriter, train_loop
from dmx_jax.training.optim import OptimConfig, Trainable, make_optimizer, under
from dmx_jax.training.resume import start_or_resume
from dmx_jax.training.rl_vlm import make_sampler
from dmx_jax.training.rollout import Reference
from dmx_jax.training.sft import make_sft_loss
from dmx_jax.training.state import init_train_state
from dmx_jax.training.step import jit_train_step, make_train_step, state_shardings
from experiments.configs import MemoryConfig
from experiments.data import batches
from experiments.overrides import ConfigError
from experiments.stage_programs import decode_shardings, grpo_programs

DONE = "DONE.json"


@dataclasses.dataclass(frozen=True)
class StageSpec:
    """The schedule of one stage: how many steps of which batch size, its optimizer and checkpoint interval."""

    name: str
    steps: int
    batch_size: int
    optim: OptimConfig
    save_every: int


@dataclasses.dataclass(frozen=True)
class RunContext:
    """What every stage of one run shares."""

    mesh: Any
    writer: MetricsWriter
    run_config: dict
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class StageRecipe:
    """What makes a stage itself. build_step(tx, trainable, state_shardings, place, draw) -> step(state, inputs) ->
    (state, metrics), tx = make_tx(optim) and `trainable` (None: Trainable.of(params)) the parameters it trains;
    prepare(arrays, meta, place) -> the step's inputs; `place` puts a host batch on the mesh (place_batch
    with the data source's per-process flag); draw() -> the next prepared batch of the stage's own stream (GRPO's
    dynamic-sampling refill: the stream's state is checkpointed after the step, so a resumed run draws the same).
    programs(tx, trainable, state shardings) -> the device programs build_step runs (a MeshProgram for the
    supervised steps, GRPOPrograms for GRPO): what the fit check (experiments.aot) compiles for a slice.
    bar_metrics label the progress bar, done_metric goes into DONE.json. validate(params, place) -> metrics of a
    fixed held-out slice, run every validate_every steps and logged as val/<key>."""

    build_step: Callable
    prepare: Callable
    flops_fn: Callable | None = None
    bar_metrics: tuple[tuple[str, str], ...] = (("loss", "loss"),)
    done_metric: tuple[str, str] = ("final_loss", "loss")
    make_tx: Callable = make_optimizer  # OptimConfig -> optax transformation
    trainable: Trainable | None = None
    stack: Callable | None = None  # rows -> (arrays, meta); None: the encoder's stack_rows
    validate: Callable | None = None
    validate_every: int = 0
    initial_aux: dict | None = None  # the train state's algorithm state (GRPO's adaptive KL coefficient)
    programs: Callable | None = None  # (tx, trainable, state shardings) -> the stage's device programs


def _with_validation(
    on_step: Callable | None, recipe: StageRecipe, spec: StageSpec, writer: MetricsWriter, place: Callable
):
    """on_step that also runs recipe.validate every recipe.validate_every steps (and at the last step)."""

    def hook(step: int, metrics: dict, state) -> None:
        if on_step is not None:
            on_step(step, metrics, state)
        if step % recipe.validate_every == 0 or step == spec.steps:
            val = recipe.validate(state.params, place)
            writer.write({"step": step, "train_stage": spec.name, **{f"val/{k}": v for k, v in val.items()}})

    return hook


def stage_done(stage_dir: Path) -> dict | None:
    f = stage_dir / DONE
    return json.loads(f.read_text()) if f.is_file() else None


def load_stage_params(stage_dir, params_like, mesh):
    """Final params of a finished stage (stage_dir: where its final_params are, a local path or a bucket path),
    placed like `params_like` (their shardings under `mesh`)."""
    shard = tree_shardings(params_like, mesh)
    target = jax.tree.map(lambda p, s: jax.ShapeDtypeStruct(p.shape, p.dtype, sharding=s), params_like, shard)
    with ocp.StandardCheckpointer() as loader:
        where = stage_dir / "final_params"
        return loader.restore(where if "://" in str(where) else where.absolute(), target)


def place_batch(arrays: dict, mesh, per_process: bool = False) -> dict:
    """A host batch -> global arrays sharded over the mesh's batch axes. per_process=False: the batch is
    identical on every process and each contributes its slice of rows; True: each process holds only its
    own rows (the grain pipeline's shards). The same code runs on one CPU and on a multi-host TPU pod."""
    rows = slice(None) if per_process else process_slice(len(jax.tree.leaves(arrays)[0]))
    return jax.tree.map(lambda x: global_array(np.asarray(x)[rows], mesh, batch_spec(np.ndim(x))), arrays)


def replicate(tree, mesh):
    """A host pytree equal on every process -> global arrays replicated over the mesh."""
    return jax.tree.map(lambda x: replicated_array(x, mesh), tree)


def stage_state(spec: StageSpec, recipe: StageRecipe, params, mesh, seed: int = 0):
    """(optimizer, initial train state, its shardings under `mesh`) of a stage starting from `params`; the
    state's layout is the one the stage's programs take and return (`recipe.programs(tx, trainable, shardings)`)."""
    tx = recipe.make_tx(spec.optim)
    state = init_train_state(params, tx, seed=seed, aux=recipe.initial_aux)
    return tx, state, state_shardings(state, mesh)


def release_unshared(tree, keep) -> int:
    """Delete the device buffers of `tree` that `keep` does not hold (the starting parameters of a resumed stage:
    the restored state replaced them and the recipe has taken its copies, e.g. GRPO's reference), so no second
    copy of the parameters lives through the stage. Returns the bytes released (per process, all shards)."""
    held = {id(x) for x in jax.tree.leaves(keep)}
    freed = 0
    for x in jax.tree.leaves(tree):
        if isinstance(x, jax.Array) and id(x) not in held and not x.is_deleted():
            freed += sum(s.data.nbytes for s in x.addressable_shards)
            x.delete()
    return freed


def run_stage(
    spec: StageSpec,
    recipe: StageRecipe,
    stage_dir: Path,
    params,
    rows,
    ctx: RunContext,
    on_step: Callable | None = None,
    store=None,
):
    """Train one stage from `params` on `rows` (encoded rows, a GrainSource or an IndexedSource); resumable;
    returns final params. `params` are consumed: their buffers are donated to the first step (or released when
    the stage resumes from a checkpoint), so a caller must not read them afterwards. on_step(step, metrics,
    state) runs after every step (e.g. a periodic probe). store: where the checkpoints and final parameters go
    (a bucket path of a remote run directory, see experiments.run_dir; default `stage_dir`)."""
    stage_dir.mkdir(parents=True, exist_ok=True)
    tx, state, shardings = stage_state(spec, recipe, params, ctx.mesh, ctx.seed)
    store = stage_dir.absolute() if store is None else store
    ck = Checkpointer(store / "ckpt", save_every=spec.save_every, keep=2)
    data = batches(rows, spec.batch_size, seed=ctx.seed, stack=recipe.stack)
    state, start = start_or_resume(state, shardings, ck, data)
    place = functools.partial(place_batch, mesh=ctx.mesh, per_process=getattr(data, "per_process", False))

    def draw():
        arrays, meta = next(data)
        return recipe.prepare(arrays, meta, place)

    step = recipe.build_step(tx, recipe.trainable, shardings, place, draw)
    if start:  # resumed: the state holds restored buffers; the fresh path donates the starting ones at step 1
        release_unshared(params, state.params)
    if recipe.validate is not None and recipe.validate_every > 0:
        # the validation prompts are the same on every process and few: replicated, any number of them
        on_step = _with_validation(on_step, recipe, spec, ctx.writer, functools.partial(replicate, mesh=ctx.mesh))
    loop = LoopConfig(num_steps=spec.steps, stage=spec.name, bar_metrics=recipe.bar_metrics)
    io = LoopIO(
        checkpointer=ck,
        writer=ctx.writer,
        run_config=ctx.run_config,
        flops_fn=recipe.flops_fn,
        prepare=lambda arrays, meta: recipe.prepare(arrays, meta, place),
        on_step=on_step,
    )
    state, summary = train_loop(step, state, data, loop, io)
    if summary["preempted"]:
        ck.close()
        raise SystemExit(f"[{spec.name}] stopped by signal at step {int(state.step)}; rerun the same command to resume")
    ck.save(int(state.step), state, force=True)
    ck.close()

    with ocp.StandardCheckpointer() as saver:  # what the next stage loads
        saver.save(store / "final_params", state.params, force=True)
    key, metric = recipe.done_metric
    info = {
        "stage": spec.name,
        "steps": int(state.step),
        "resumed_from": start,
        key: summary["last_metrics"].get(metric),
    }
    (stage_dir / DONE).write_text(json.dumps(info))
    return state.params


def sft_recipe(
    graphdef, model_cfg=None, *, loss_chunk: int = 0, grad_accum: int = 1, mesh=None, per_row: bool = False
) -> StageRecipe:
    """Supervised stages (SFT, cold start): answer-only cross-entropy; the step is jitted with the state's
    shardings in and out (donated) and the placed batch's shardings, under the mesh, so the model's activation
    constraints apply and the step compiles once for the run."""

    def programs(tx, trainable, shardings):
        step = make_train_step(
            graphdef,
            make_sft_loss(loss_chunk, per_row),
            tx,
            grad_accum=grad_accum,
            compute_dtype=None if model_cfg is None else model_cfg.dtype,
            trainable=trainable,
        )
        return jit_train_step(step, shardings, mesh=mesh)  # the batch keeps the shardings place_batch gave it

    def build_step(tx, trainable, shardings, place, draw):
        return programs(tx, trainable, shardings)

    def prepare(arrays, meta, place):
        return place({k: v for k, v in arrays.items() if k != "deltas"})

    flops = None if model_cfg is None else functools.partial(batch_train_flops, model_cfg)
    return StageRecipe(build_step, prepare, flops, programs=programs)


def align_recipe(align_graphdef, head_lr: float) -> StageRecipe:
    """The alignment stage (dmx_jax.training.align): the vision tower + merger and a pooled linear head learn the
    study's labels, sides and boxes from pixels; the head at its own learning rate."""

    def build_step(tx, trainable, shardings, place, draw):
        return jit_train_step(make_train_step(align_graphdef, make_align_loss(), tx, trainable=trainable), shardings)

    return StageRecipe(
        build_step,
        lambda arrays, meta, place: place(arrays),
        make_tx=lambda optim: align_optimizer(optim, head_lr=head_lr),
        stack=lambda rows: (stack_align_rows(rows), {"example_ids": []}),
    )


def grpo_recipe(
    graphdef,
    rl_cfg,
    tokenizer,
    ref_params,
    *,
    mesh,
    model_cfg,
    memory: MemoryConfig,
    seed: int = 0,
    generation_config: dict | None = None,
    validation_rows: list | None = None,
) -> StageRecipe:
    """GRPO with the jitted reward preset `rl_cfg.reward_preset` (rewards computed on device from token ids);
    the prompt stream carries each prompt's reward ground truth, built from the rows' targets and boxes. Dynamic
    sampling refills from the same stream. validation_rows (encoded held-out reasoning prompts): every
    rl.eval_every steps they are answered greedily and scored with the same reward (val/reward/<term>,
    val/grounding_miou over the prompts with boxes, val/completion_len_mean)."""
    algo, reward_cfg = rl_cfg.algo, rl_cfg.reward_config()
    table = token_bytes_table(tokenizer, model_cfg.text.vocab_size)
    jitted_reward = make_reward_fn(reward_cfg, table, max_new_tokens=algo.max_new_tokens)

    def reward_fn(tokens, cmask, rep):  # all on device: ids -> bytes -> parse -> scores
        return jitted_reward(tokens, cmask, rep["reward_truth"])

    stops = stop_token_ids(tokenizer, generation_config)

    def programs(tx, trainable, shardings):
        return grpo_programs(
            graphdef,
            rl_cfg,
            model_cfg,
            memory,
            mesh,
            tx=tx,
            trainable=trainable,
            shardings=shardings,
            stop_ids=stops,
            pad_id=tokenizer.pad_id,
            decode=decode_shardings(ref_params, mesh, memory),
        )

    def build_step(tx, trainable, shardings, place, draw):
        progs = programs(tx, trainable, shardings)
        reference = (
            Reference(adapters=adapters_of(ref_params))  # LoRA: the shared base + the starting adapters
            if model_cfg.text.lora.rank
            else Reference(ref_params, memory.ref_dtype, memory.ref_offload)
        )
        learner = GRPOLearner(
            graphdef,
            algo,
            programs=progs,
            reward_fn=reward_fn,
            reference=reference,
            seed=seed,
            place=place,
            refill=draw if algo.dynamic_sampling else None,
            mesh=mesh,
            state_shardings=shardings,
        )
        return learner.step

    def prepare(arrays, meta, place):
        truth = ground_truth_arrays([r["target"] for r in meta["rows"]], [r["boxes"] for r in meta["rows"]], reward_cfg)
        return {**{k: v for k, v in arrays.items() if k != "loss_mask"}, "reward_truth": truth}

    validate = None
    if validation_rows and rl_cfg.eval_every > 0:
        val_arrays, val_meta = stack_rows(validation_rows)
        with_box = np.asarray([bool(r["boxes"]) for r in val_meta["rows"]], np.float32)
        val_inputs = {**prepare(val_arrays, val_meta, None), "with_box": with_box}  # host arrays, built once
        greedy = make_sampler(
            graphdef,
            algo,
            stop_token_ids=stop_token_ids(tokenizer, generation_config),
            pad_id=tokenizer.pad_id,
            shared_prefill=False,
            cache_dtype=memory.kv_cache_dtype,
            greedy=True,
        )

        def validate(params, place):
            prompts = place(val_inputs)
            tokens, _, cmask = greedy.sample(params, prompts, jax.random.key(seed))
            rewards = reward_fn(tokens, cmask, prompts)
            out = {f"reward/{k}": float(jnp.mean(v)) for k, v in rewards.items()}
            if "grounding_iou" in rewards and with_box.any():
                box = prompts["with_box"]
                out["grounding_miou"] = float(jnp.sum(rewards["grounding_iou"] * box) / jnp.sum(box))
            out["completion_len_mean"] = float(jnp.mean(jnp.sum(cmask, axis=1)))
            return out

    return StageRecipe(
        build_step,
        prepare,
        bar_metrics=(("reward", "reward/overall"), ("kl", "kl"), ("len", "completion_len_mean")),
        done_metric=("final_reward", "reward/overall"),
        validate=validate,
        validate_every=rl_cfg.eval_every,
        initial_aux=initial_aux(algo),
        programs=programs,
    )


def trimmed_stack(rows, multiple: int):
    """stack_rows, then the batch cut to its longest row rounded up to `multiple` tokens."""
    arrays, meta = stack_rows(rows)
    return trim_right_padding(arrays, multiple), meta


def plan_stage(
    name: str,
    stage_cfg,
    graphdef,
    model_cfg,
    tokenizer,
    ref_params,
    *,
    mesh,
    seed: int = 0,
    memory=None,
    generation_config: dict | None = None,
    validation_rows: list | None = None,
) -> tuple[StageSpec, StageRecipe]:
    """The schedule and recipe of stage `name` from its config section (cfg.sft / cfg.cold_start: StageConfig,
    cfg.rl: RLConfig) and the run's MemoryConfig. GRPO's reference model is `ref_params` (the parameters the
    stage starts from); validation_rows: GRPO's held-out validation prompts (see grpo_recipe)."""
    memory = memory if memory is not None else MemoryConfig()
    if name != "grpo":
        spec = StageSpec(name, stage_cfg.steps, stage_cfg.batch_size, stage_cfg.optim, stage_cfg.save_every)
        recipe = sft_recipe(
            graphdef,
            model_cfg,
            grad_accum=stage_cfg.optim.grad_accum,
            mesh=mesh,
            loss_chunk=memory.loss_chunk,
            per_row=stage_cfg.loss_weighting == "row",
        )
        if stage_cfg.pad_multiple > 0:
            trimmed = functools.partial(trimmed_stack, multiple=stage_cfg.pad_multiple)
            recipe = dataclasses.replace(recipe, stack=trimmed)
        return spec, _with_param_groups(recipe, stage_cfg, ref_params)
    n_rollouts = stage_cfg.prompts_per_step * stage_cfg.algo.group_size
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if n_rollouts % shards:
        raise ConfigError(
            f"rl.prompts_per_step x rl.algo.group_size = {n_rollouts} rollouts per step must be "
            f"divisible by the mesh's data x fsdp = {shards} devices (rollouts are data-parallel)"
        )
    spec = StageSpec(name, stage_cfg.steps, stage_cfg.prompts_per_step, stage_cfg.optim, stage_cfg.save_every)
    recipe = grpo_recipe(
        graphdef,
        stage_cfg,
        tokenizer,
        ref_params,
        mesh=mesh,
        model_cfg=model_cfg,
        memory=memory,
        seed=seed,
        generation_config=generation_config,
        validation_rows=validation_rows,
    )
    per_step = grpo_updates_per_step(stage_cfg) if stage_cfg.lr_schedule_unit == "rollout" else 1
    return spec, _with_param_groups(recipe, stage_cfg, ref_params, updates_per_step=per_step)


def grpo_updates_per_step(rl_cfg) -> int:
    """Optimizer updates in one GRPO step: epochs x mini-batches of ppo_mini_batch_size prompts."""
    algo = rl_cfg.algo
    return algo.num_iterations * (
        rl_cfg.prompts_per_step // algo.ppo_mini_batch_size if algo.ppo_mini_batch_size else 1
    )


def _with_param_groups(recipe: StageRecipe, stage_cfg, params, updates_per_step: int = 1) -> StageRecipe:
    """The stage's optimizer with its frozen parameters (stage_cfg.frozen; vision_lr=0 freezes "vision"), the
    vision tower + merger at vision_lr, and the schedule counting steps of `updates_per_step` updates. Each frozen
    prefix must name parameters of the model. A model with LoRA adapters trains them alone."""
    trainable = stage_trainable(stage_cfg, params)
    if trainable.everything and not stage_cfg.vision_lr and updates_per_step == 1:
        return recipe
    if params is not None:
        paths = [path_to_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
        for prefix in trainable.frozen:
            if not any(under(p, prefix) for p in paths):
                tops = sorted({p.split(".")[0] for p in paths})
                raise ConfigError(
                    f"frozen={prefix!r} names no parameter (paths start with {', '.join(tops)}, "
                    f"e.g. vision, vision.merger, text.embed)"
                )
    return dataclasses.replace(
        recipe, make_tx=stage_optimizer(stage_cfg, params, updates_per_step), trainable=trainable
    )


def stage_trainable(stage_cfg, params) -> Trainable:
    """The stage's trained parameters: all but stage_cfg.frozen (and "vision" when vision_lr is 0); a model with
    LoRA adapters (params None: none) trains them alone."""
    frozen = tuple(stage_cfg.frozen) + (("vision",) if stage_cfg.vision_lr == 0 else ())
    return Trainable(frozen) if params is None else Trainable.of(params, frozen)


def stage_optimizer(stage_cfg, params, updates_per_step: int = 1) -> Callable:
    """optim -> the stage's optimizer (make_optimizer over `stage_trainable`, the vision tower at vision_lr): what
    the runner trains with and the fit check compiles."""
    lr_by_prefix = {"vision": stage_cfg.vision_lr} if stage_cfg.vision_lr else {}
    trainable = stage_trainable(stage_cfg, params)
    return lambda optim: make_optimizer(
        optim, lr_by_prefix=lr_by_prefix, trainable=trainable, updates_per_step=updates_per_step
    )
