"""The one sharding table of dmx-jax.

Two steps, in the MaxText spirit:
1. PARAM_LOGICAL_AXES maps every parameter path (regex over the dotted NNX path, see BUILD_NOTES.md) to
   logical axis names, one per array dimension.
2. A logical-axis rule set maps logical names to mesh axes. TRAIN_RULES shards weights over fsdp and
   tensor; SAMPLE_RULES drops fsdp from weights (decoding reads every weight each step, so gathering
   them once beats an all-gather per token).
A dimension whose size is not divisible by its mesh axes falls back to replicated (recorded by
`explain`). Layers carry no annotations; both towers get their sharding from here.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

LogicalAxes = tuple[str | None, ...]
Rules = Mapping[str, str | tuple[str, ...] | None]

_L = "layers"
PARAM_LOGICAL_AXES: tuple[tuple[str, LogicalAxes], ...] = (
    # vision tower
    (r"vision\.patch_embed\.kernel", ("vision_patch", "vision_embed")),
    (r"vision\.blocks\.norm[12]\.scale", (_L, None)),
    (r"vision\.blocks\.attn\.qkv\.kernel", (_L, "vision_embed", None, "vision_heads", "head_dim")),
    (r"vision\.blocks\.attn\.qkv\.bias", (_L, None, "vision_heads", "head_dim")),
    (r"vision\.blocks\.attn\.proj\.kernel", (_L, "vision_heads", "head_dim", "vision_embed")),
    (r"vision\.blocks\.attn\.proj\.bias", (_L, None)),
    (r"vision\.blocks\.mlp\.(gate|up)\.kernel", (_L, "vision_embed", "vision_mlp")),
    (r"vision\.blocks\.mlp\.(gate|up)\.bias", (_L, "vision_mlp")),
    (r"vision\.blocks\.mlp\.down\.kernel", (_L, "vision_mlp", "vision_embed")),
    (r"vision\.blocks\.mlp\.down\.bias", (_L, None)),
    (r"vision\.merger\.ln_q\.scale", (None,)),
    (r"vision\.merger\.fc1\.kernel", ("vision_merge", "vision_merge_mlp")),
    (r"vision\.merger\.fc1\.bias", ("vision_merge_mlp",)),
    (r"vision\.merger\.fc2\.kernel", ("vision_merge_mlp", "embed")),
    (r"vision\.merger\.fc2\.bias", (None,)),
    # text decoder
    (r"text\.embed\.embedding", ("vocab", "embed")),
    (r"text\.layers\.(input_norm|post_attn_norm)\.scale", (_L, None)),
    (r"text\.layers\.attn\.q\.kernel", (_L, "embed", "heads", "head_dim")),
    (r"text\.layers\.attn\.q\.bias", (_L, "heads", "head_dim")),
    (r"text\.layers\.attn\.[kv]\.kernel", (_L, "embed", "kv_heads", "head_dim")),
    (r"text\.layers\.attn\.[kv]\.bias", (_L, "kv_heads", "head_dim")),
    (r"text\.layers\.attn\.o\.kernel", (_L, "heads", "head_dim", "embed")),
    (r"text\.layers\.mlp\.(gate|up)\.kernel", (_L, "embed", "mlp")),
    (r"text\.layers\.mlp\.down\.kernel", (_L, "mlp", "embed")),
    # LoRA adapters (dmx_jax.model.lora): A keeps its kernel's input axes, B its output axes; the rank is whole
    (r"text\.layers\.attn\.[qkv]\.lora_a", (_L, "embed", "lora_rank")),
    (r"text\.layers\.attn\.q\.lora_b", (_L, "lora_rank", "heads", "head_dim")),
    (r"text\.layers\.attn\.[kv]\.lora_b", (_L, "lora_rank", "kv_heads", "head_dim")),
    (r"text\.layers\.attn\.o\.lora_a", (_L, "heads", "head_dim", "lora_rank")),
    (r"text\.layers\.attn\.o\.lora_b", (_L, "lora_rank", "embed")),
    (r"text\.layers\.mlp\.(gate|up)\.lora_a", (_L, "embed", "lora_rank")),
    (r"text\.layers\.mlp\.(gate|up)\.lora_b", (_L, "lora_rank", "mlp")),
    (r"text\.layers\.mlp\.down\.lora_a", (_L, "mlp", "lora_rank")),
    (r"text\.layers\.mlp\.down\.lora_b", (_L, "lora_rank", "embed")),
    (r"text\.norm\.scale", (None,)),
    (r"lm_head\.kernel", ("embed", "vocab")),
    (r"align_readout\.kernel", ("embed", None)),  # the alignment stage's decoder read-out head
    (r"align_readout\.bias", (None,)),
)

TRAIN_RULES: Rules = {
    "batch": ("data", "fsdp"),
    "length": None,
    "layers": None,
    "head_dim": None,
    "embed": "fsdp",
    "vocab": "tensor",
    "heads": "tensor",
    "kv_heads": "tensor",
    "mlp": "tensor",
    "vision_patch": None,
    "vision_embed": "fsdp",
    "vision_heads": "tensor",
    "vision_mlp": "tensor",
    "vision_merge": "fsdp",
    "vision_merge_mlp": "tensor",
    "patches": None,
    "lora_rank": None,
}
SAMPLE_RULES: Rules = {**TRAIN_RULES, "embed": None, "vision_embed": None, "vision_merge": None}

# Activations (logical names prefixed act_): batch-major tensors split over (data, fsdp), head / MLP / vocab
# dimensions over tensor; the residual stream's embedding dimension stays whole (no sequence parallelism).
ACTIVATION_RULES: Rules = {
    "act_batch": ("data", "fsdp"),
    "act_length": None,
    "act_embed": None,
    "act_heads": "tensor",
    "act_kv_heads": "tensor",
    "act_mlp": "tensor",
    "act_vocab": "tensor",
    "act_patches": None,  # packed patches of one row (the row is the vmapped batch dimension)
    "act_vision_heads": "tensor",
    "act_vision_mlp": "tensor",
}

_COMPILED = tuple((re.compile(pattern + r"$"), axes) for pattern, axes in PARAM_LOGICAL_AXES)


def path_to_str(path: Sequence[Any]) -> str:
    """('text', 'layers', 'attn', 'q', 'kernel') or jax key paths -> 'text.layers.attn.q.kernel'."""
    parts = []
    for p in path:
        for attr in ("key", "name", "idx"):
            if hasattr(p, attr):
                p = getattr(p, attr)
                break
        parts.append(str(p))
    if parts and parts[-1] == "value":  # nnx.Variable leaves flatten with a trailing `.value`
        parts.pop()
    return ".".join(parts)


def logical_axes(path: Sequence[Any] | str, ndim: int) -> LogicalAxes:
    """Logical axis names of a parameter; raises for a path the table does not know."""
    name = path if isinstance(path, str) else path_to_str(path)
    for pattern, axes in _COMPILED:
        if pattern.search(name):
            if len(axes) != ndim:
                raise ValueError(f"sharding table gives {len(axes)} axes {axes} for {name!r}, but it has {ndim} dims")
            return axes
    raise KeyError(f"parameter {name!r} has no entry in dmx_jax.sharding.rules.PARAM_LOGICAL_AXES")


def spec_for(axes: LogicalAxes, shape: Sequence[int], mesh: Mesh, rules: Rules) -> PartitionSpec:
    """PartitionSpec for logical axes under `rules`; indivisible dims and reused mesh axes replicate."""
    used: set[str] = set()
    out = []
    for name, dim in zip(axes, shape):
        mesh_axes = rules.get(name) if name is not None else None
        if mesh_axes is None:
            out.append(None)
            continue
        mesh_axes = (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes)
        mesh_axes = tuple(a for a in mesh_axes if mesh.shape[a] > 1 and a not in used)
        size = 1
        for a in mesh_axes:
            size *= mesh.shape[a]
        if not mesh_axes or dim % size:
            out.append(None)
            continue
        used.update(mesh_axes)
        out.append(mesh_axes[0] if len(mesh_axes) == 1 else mesh_axes)
    return PartitionSpec(*out)


def param_spec(
    path: Sequence[Any] | str, shape: Sequence[int], mesh: Mesh, rules: Rules = TRAIN_RULES
) -> PartitionSpec:
    return spec_for(logical_axes(path, len(shape)), shape, mesh, rules)


def param_sharding_fn(
    mesh: Mesh, rules: Rules = TRAIN_RULES
) -> Callable[[Sequence[Any], Sequence[int]], NamedSharding]:
    """The `param_sharding(path, shape)` callback `dmx_jax.hf.load_pretrained` places tensors with."""
    return lambda path, shape: NamedSharding(mesh, param_spec(path, shape, mesh, rules))


def tree_partition_specs(tree: Any, mesh: Mesh, rules: Rules = TRAIN_RULES) -> Any:
    """PartitionSpecs for a pytree of parameters (nnx.State, nested dicts) keyed by their paths."""
    return jax.tree_util.tree_map_with_path(lambda p, x: param_spec(p, x.shape, mesh, rules), tree)


def tree_shardings(tree: Any, mesh: Mesh, rules: Rules = TRAIN_RULES) -> Any:
    return jax.tree.map(
        lambda s: NamedSharding(mesh, s),
        tree_partition_specs(tree, mesh, rules),
        is_leaf=lambda x: isinstance(x, PartitionSpec),
    )


def shardings_like_params(tree: Any, param_tree: Any, mesh: Mesh, rules: Rules = TRAIN_RULES) -> Any:
    """Shardings for a tree that embeds copies of the parameter tree (optimizer moments).

    A leaf whose path ends with a parameter's path and has that parameter's shape is sharded like it;
    everything else (counts, scalars) is replicated.
    """
    param_specs = {}
    for p, x in jax.tree_util.tree_flatten_with_path(param_tree)[0]:
        param_specs[path_to_str(p)] = (tuple(x.shape), param_spec(p, x.shape, mesh, rules))

    def one(path, leaf):
        name = path_to_str(path)
        shape = tuple(getattr(leaf, "shape", ()))
        parts = name.split(".")
        for i in range(len(parts)):
            hit = param_specs.get(".".join(parts[i:]))
            if hit is not None and hit[0] == shape:
                return NamedSharding(mesh, hit[1])
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree_util.tree_map_with_path(one, tree)


def constrain(x: jax.Array, axes: LogicalAxes, rules: Rules = ACTIVATION_RULES) -> jax.Array:
    """`with_sharding_constraint` of an activation by logical axes under the context mesh (`jax.set_mesh`).

    A no-op without a context mesh (plain CPU runs and tests) or on a mesh without the (data, fsdp, tensor)
    axes. Indivisible dimensions stay unsplit (as for parameters). Inside `vmap` the mapped dimension is
    sharded by the vmap's `spmd_axis_name` (see Qwen25VL.embed) or left to the partitioner.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1 or any(a not in mesh.shape for a in ("data", "fsdp", "tensor")):
        return x
    if len(axes) != x.ndim:
        raise ValueError(f"constrain: {len(axes)} logical axes {axes} for an array of shape {x.shape}")
    return jax.lax.with_sharding_constraint(x, spec_for(axes, x.shape, mesh, rules))


def batch_axes_of_context_mesh() -> tuple[str, ...] | None:
    """The context mesh's batch axes (for vmap's spmd_axis_name), None without a (data, fsdp, tensor) mesh."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1 or any(a not in mesh.shape for a in ("data", "fsdp", "tensor")):
        return None
    axes = tuple(a for a in ("data", "fsdp") if mesh.shape[a] > 1)
    return axes or None


def batch_spec(ndim: int, rules: Rules = TRAIN_RULES, batch_axis: int = 0) -> PartitionSpec:
    """Spec for a batch-major activation/input: batch over (data, fsdp), the rest replicated."""
    axes: list[Any] = [None] * ndim
    axes[batch_axis] = rules["batch"]
    return PartitionSpec(*axes)


def explain(tree: Any, mesh: Mesh, rules: Rules = TRAIN_RULES) -> list[str]:
    """One line per parameter: path, shape, logical axes, PartitionSpec (for logs and BUILD_NOTES)."""
    lines = []
    for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
        axes = logical_axes(p, x.ndim)
        lines.append(f"{path_to_str(p)} {tuple(x.shape)} {axes} -> {spec_for(axes, x.shape, mesh, rules)}")
    return lines
