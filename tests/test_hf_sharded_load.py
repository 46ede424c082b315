"""HF loading on a mesh reads each device's shard straight from the safetensors files.

A tiny Qwen2.5-VL (transformers) is re-exported with the project's own save_pretrained (sharded files), then
loaded on a (data=1, fsdp=4, tensor=2) mesh of the 8 host CPU devices. Checked: values equal the unsharded
load and the mapping table's to_jax applied to whole tensors, every array carries the rule table's sharding,
and a counting wrapper around the file reads shows that each device callback of a sharded parameter reads
exactly its shard's elements, never a whole on-disk tensor.
"""

import json
import math

import jax
import numpy as np
import pytest
import safetensors
from flax import nnx
from safetensors.numpy import load_file

from dmx_jax.hf import load as hf_load
from dmx_jax.hf import load_pretrained, mapping, save_pretrained, slicing
from dmx_jax.sharding import param_sharding_fn
from dmx_jax.sharding.mesh import MeshConfig, make_mesh
from tests.helpers import hf_reference as R


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    src = tmp_path_factory.mktemp("hf_ref")
    R.make_reference("a", seed=3).save_pretrained(src)
    model, _ = load_pretrained(src)
    out = tmp_path_factory.mktemp("hf_sharded")
    save_pretrained(model, out, max_shard_size="40KB")
    assert len(set(json.loads((out / "model.safetensors.index.json").read_text())["weight_map"].values())) > 1
    tensors = {}
    for f in out.glob("*.safetensors"):
        tensors.update(load_file(str(f)))
    return out, tensors


def _leaves(model):
    flat = jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(nnx.state(model, nnx.Param)))[0]
    return {".".join(str(getattr(k, "key", k)) for k in path): v for path, v in flat}


def _whole_tensor_reference(tensors, cfg):
    """Each parameter from whole tensors through the table's own to_jax (independent of dmx_jax.hf.slicing)."""
    out = {}
    for param_path, template, to_jax, _ in mapping.rows(cfg):
        names = mapping.hf_names(template, cfg, param_path)
        arrs = [to_jax(tensors[n], cfg) for n in names]
        out[param_path] = np.stack(arrs) if mapping.num_layers(param_path, cfg) is not None else arrs[0]
    return out


def test_layouts_agree_with_to_jax_on_arbitrary_blocks(folder):
    """Every table row: the block read through its slice layout == to_jax(whole tensor)[block]."""
    path, tensors = folder
    cfg = hf_load.read_config(path)
    rng = np.random.default_rng(0)
    for param_path, template, to_jax, _ in mapping.rows(cfg):
        hf = tensors[mapping.hf_names(template, cfg, param_path)[0]]
        full = to_jax(hf, cfg)
        lay = mapping.layout(param_path, hf.shape, cfg)
        assert slicing.target_shape(lay, hf.shape) == full.shape, param_path
        for _ in range(6):
            index = []
            for n in full.shape:
                lo = int(rng.integers(0, n))
                index.append(slice(lo, int(rng.integers(lo + 1, n + 1))))
            got = slicing.read_block(lambda ix, hf=hf: hf[ix], hf.shape, lay, tuple(index))
            np.testing.assert_array_equal(got, full[tuple(index)], err_msg=f"{param_path} {index}")


def test_sharded_load_reads_only_each_devices_shard(folder, monkeypatch):
    path, tensors = folder
    mesh = make_mesh(MeshConfig(data=1, fsdp=4, tensor=2))
    sizes = {n: math.prod(t.shape) for n, t in tensors.items()}
    calls, current = [], [[]]

    real_open = safetensors.safe_open

    class CountingSlice:  # what a file read hands back: every element is counted
        def __init__(self, sl, name):
            self.sl, self.name = sl, name

        def get_shape(self):
            return self.sl.get_shape()

        def __getitem__(self, index):
            block = self.sl[index]
            current[0].append((self.name, block.size))
            return block

    class CountingHandle:
        def __init__(self, *args, **kwargs):
            self.f = real_open(*args, **kwargs)

        def keys(self):
            return self.f.keys()

        def get_slice(self, name):
            return CountingSlice(self.f.get_slice(name), name)

        def get_tensor(self, name):
            t = self.f.get_tensor(name)
            current[0].append((name, t.size))
            return t

    real_make = jax.make_array_from_callback

    def counting_make(shape, sharding, cb, dtype=None):
        made = []  # (index, reads) of each device callback of this parameter

        def wrapped(index):
            current[0] = []
            out = cb(index)
            assert np.shape(out) == tuple(len(range(*s.indices(n))) for s, n in zip(index, shape))
            made.append((index, current[0]))
            return out

        out = real_make(shape, sharding, wrapped, dtype=dtype)
        calls.append((shape, sharding, made))
        return out

    monkeypatch.setattr(hf_load, "safe_open", CountingHandle)  # the loader binds safe_open at import
    monkeypatch.setattr(jax, "make_array_from_callback", counting_make)
    sharded, cfg = load_pretrained(path, mesh=mesh)
    monkeypatch.undo()

    # 1. values: the unsharded load and the whole-tensor to_jax reference, exactly
    plain, _ = load_pretrained(path)
    got, base = _leaves(sharded), _leaves(plain)
    ref = _whole_tensor_reference(tensors, cfg)
    assert set(got) == set(base) == set(ref)
    for k in got:
        np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(base[k]), err_msg=k)
        np.testing.assert_array_equal(np.asarray(got[k]), ref[k], err_msg=k)

    # 2. shardings: the rule table's, and the interesting ones really are split
    rule = param_sharding_fn(mesh)
    for k, v in got.items():
        want = rule(tuple(k.split(".")), v.shape)
        assert v.sharding.is_equivalent_to(want, v.ndim) and v.sharding.spec == want.spec, (k, v.sharding, want)
    split = {k for k, v in got.items() if not v.sharding.is_fully_replicated}
    assert {
        "text.embed.embedding",
        "text.layers.attn.q.kernel",
        "text.layers.attn.k.kernel",
        "text.layers.mlp.down.kernel",
        "vision.blocks.attn.qkv.kernel",
        "vision.blocks.attn.proj.kernel",
        "vision.merger.fc1.kernel",
    } <= split

    # 3. reads: one process holds every shard, so each sharded parameter's tensor(s) are read once, whole, by the
    # first device callback (one request per file tensor), and every other shard is cut from that block
    checked = 0
    for shape, sharding, made in calls:
        reading = [reads for _, reads in made if reads]
        if sharding.is_fully_replicated:
            continue
        assert len(made) == 8 and len(reading) == 1, (shape, [len(r) for _, r in made])
        assert sum(n for _, n in reading[0]) == math.prod(shape), (shape, reading)
        assert all(n == sizes[name] for name, n in reading[0]), (shape, reading)
        checked += 1
    assert checked >= len(split)


def test_a_process_reads_one_block_only_when_its_shards_tile_it():
    """local_block: a process's shards that tile a block are read as that block; shards with a gap between them
    (another process's rows in the middle) fall back to per-shard reads, never reading rows it does not hold."""
    rows = lambda a, b: (slice(a, b), slice(0, 6))
    assert hf_load.local_block((8, 6), [rows(0, 2), rows(2, 4)]) == ((0, 4), (0, 6))
    assert hf_load.local_block((8, 6), [rows(0, 2), rows(0, 2), rows(2, 4)]) == ((0, 4), (0, 6))  # a replica
    assert hf_load.local_block((8, 6), [rows(0, 2), rows(4, 6)]) is None
    cols = [(slice(0, 8), slice(0, 3)), (slice(0, 8), slice(3, 6))]
    assert hf_load.local_block((8, 6), cols) == ((0, 8), (0, 6))


def test_bf16_sharded_load_equals_cast_of_unsharded(folder):
    path, _ = folder
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    a, _ = load_pretrained(path, mesh=mesh, dtype="bfloat16")
    b, _ = load_pretrained(path)
    for (k, x), (_, y) in zip(sorted(_leaves(a).items()), sorted(_leaves(b).items())):
        assert x.dtype == np.dtype("bfloat16"), k
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y).astype(x.dtype), err_msg=k)


def test_qkv_heads_shard_is_three_exact_ranges():
    """Vision qkv [3*n*h, d] sharded over heads: one contiguous file range per q/k/v, nothing more."""
    n, h, d = 4, 3, 5
    hf = np.arange(3 * n * h * d, dtype=np.float32).reshape(3 * n * h, d)
    lay = (((1,), (d,)), ((0,), (3, n, h)))
    reads = []
    index = (slice(0, d), slice(0, 3), slice(2, 4), slice(0, h))
    got = slicing.read_block(lambda ix: reads.append(ix) or hf[ix], hf.shape, lay, index)
    want = hf.T.reshape(d, 3, n, h)[index]
    np.testing.assert_array_equal(got, want)
    assert [r[0] for r in reads] == [slice(p * n * h + 2 * h, p * n * h + 4 * h) for p in range(3)]
    assert sum(hf[r].size for r in reads) == want.size
