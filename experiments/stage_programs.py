"""The GRPO stage's device programs from its config: what the stage runner's learner runs and the fit check
(experiments.aot) compiles, built here once for both."""

from __future__ import annotations

from dmx_jax.training.grpo import sampling_shardings
from dmx_jax.training.grpo_programs import GRPOPrograms, make_grpo_programs
from dmx_jax.training.rl_vlm import make_policy_logprob, make_sampler
from experiments.configs import MemoryConfig


def grpo_programs(
    graphdef, rl_cfg, model_cfg, memory: MemoryConfig, mesh, *, tx, trainable, shardings, stop_ids, pad_id, decode=None
) -> GRPOPrograms:
    """The GRPO stage's device programs (sampler, log-prob passes, update, the weights' re-layout for decoding when
    `decode` = decode_shardings(...) is given) from its config: what the runner's learner runs and the fit check
    compiles. The group-shared prefill places P prompts (not P x G rows), so it is
    used only when P divides over the mesh's batch axes; a LoRA model's reference is its own base with the
    adapters the stage started from (a copy of the adapters alone)."""
    algo = rl_cfg.algo
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    sampler = make_sampler(
        graphdef,
        algo,
        stop_token_ids=stop_ids,
        pad_id=pad_id,
        shared_prefill=rl_cfg.prompts_per_step % shards == 0,
        cache_dtype=memory.kv_cache_dtype,
    )
    return make_grpo_programs(
        graphdef,
        algo,
        tx,
        sampler,
        make_policy_logprob(algo, chunk_size=memory.loss_chunk),
        grad_accum=rl_cfg.optim.grad_accum,
        compute_dtype=model_cfg.dtype,
        trainable=trainable,
        state_shardings=shardings,
        sample_shardings=decode,
        reference_kind="adapters" if model_cfg.text.lora.rank and algo.needs_reference else "params",
    )


def decode_shardings(params, mesh, memory: MemoryConfig):
    """The weights' layout for decoding: memory.decode_layout="sample" on an FSDP mesh re-lays a compute-dtype
    copy out without FSDP once per rollout (SAMPLE_RULES); None decodes in the train layout (no copy)."""
    if mesh.shape["fsdp"] > 1 and memory.decode_layout == "sample":
        return sampling_shardings(params, mesh)
    return None
