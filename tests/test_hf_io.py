"""HF round trip (dmx-jax -> save_pretrained -> transformers) and clear errors for bad folders."""

import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from safetensors.numpy import load_file, save_file
from safetensors.torch import load_file as load_torch

from dmx_jax.hf import CheckpointError, load_pretrained, mapping, read_config, save_pretrained
from dmx_jax.model import PRESETS, ModelConfig, Qwen25VL, qwen2_5_vl_7b, rope_index
from tests.helpers import hf_reference as R


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    ref = R.make_reference("a", seed=1)
    path = tmp_path_factory.mktemp("hf_src")
    ref.save_pretrained(path)
    return ref, path


def _inputs():
    f = R.processor()(images=[R.gray_image(84, 112, 9)], return_tensors="np")
    ids, mask = R.left_pad([R.prompt_ids(R.image_tokens(f["image_grid_thw"]), [[1, 4], [5, 6]]), [1, 2, 3]])
    return ids, mask, f["pixel_values"], f["image_grid_thw"]


@pytest.mark.parametrize("shard", [None, "40KB"])
def test_round_trip_opens_in_transformers(hf_folder, tmp_path, shard):
    from transformers import Qwen2_5_VLForConditionalGeneration  # noqa: PLC0415 heavy

    ref, src = hf_folder
    model, cfg = load_pretrained(src)
    out = tmp_path / "export"
    save_pretrained(model, out, **({"max_shard_size": shard} if shard else {}))
    if shard:
        index = json.loads((out / "model.safetensors.index.json").read_text())
        assert len(set(index["weight_map"].values())) > 1
    back = Qwen2_5_VLForConditionalGeneration.from_pretrained(out, attn_implementation="eager").eval()
    # bit-identical tensors
    src_sd, back_sd = ref.state_dict(), back.state_dict()
    assert set(src_sd) == set(back_sd)
    for k in src_sd:
        assert torch.equal(src_sd[k], back_sd[k]), k
    ids, mask, pv, grid = _inputs()
    a = R.reference_logits(ref, ids, mask, pv, grid)
    b = R.reference_logits(back, ids, mask, pv, grid)
    assert float(np.abs(a - b)[mask.astype(bool)].max()) <= 1e-5
    again, _ = load_pretrained(out)  # and the export loads back into dmx-jax
    c = np.asarray(again(ids, pixel_values=pv, image_grid_thw=grid, attention_mask=mask))
    assert float(np.abs(a - c)[mask.astype(bool)].max()) <= 1e-4


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst, load_file(str(dst / "model.safetensors"))


def test_missing_tensor(hf_folder, tmp_path):
    path, sd = _copy(hf_folder[1], tmp_path / "m")
    name = next(k for k in sd if "layers.1.mlp.up_proj" in k)
    del sd[name]
    save_file(sd, str(path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"tensor model\.layers\.1\.mlp\.up_proj\.weight is missing"):
        load_pretrained(path)


def test_extra_tensor(hf_folder, tmp_path):
    path, sd = _copy(hf_folder[1], tmp_path / "x")
    sd["model.layers.0.self_attn.rogue.weight"] = np.zeros((2, 2), np.float32)
    save_file(sd, str(path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"unexpected tensors.*rogue.*model\.safetensors"):
        load_pretrained(path)


def test_wrong_shape(hf_folder, tmp_path):
    path, sd = _copy(hf_folder[1], tmp_path / "s")
    name = next(k for k in sd if k.endswith("layers.0.self_attn.q_proj.weight"))
    sd[name] = sd[name][:-4]
    save_file(sd, str(path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: tensor .*q_proj\.weight has shape \(60, 64\)"):
        load_pretrained(path)


def test_not_qwen2_5_vl_config(hf_folder, tmp_path):
    path, _ = _copy(hf_folder[1], tmp_path / "c")
    cfg = json.loads((path / "config.json").read_text())
    cfg["model_type"] = "llama"
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"config\.json: model_type is 'llama', expected 'qwen2_5_vl'"):
        load_pretrained(path)


def test_corrupt_safetensors(hf_folder, tmp_path):
    path, _ = _copy(hf_folder[1], tmp_path / "z")
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(b"\x07garbage" + data[64:200])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: cannot read safetensors header"):
        load_pretrained(path)


def test_error_is_one_clear_line_from_a_fresh_process(hf_folder, tmp_path):
    """The user-facing error has no deep traceback: CheckpointError is raised from load_pretrained."""
    path, sd = _copy(hf_folder[1], tmp_path / "q")
    del sd["model.norm.weight"]
    save_file(sd, str(path / "model.safetensors"))
    with pytest.raises(CheckpointError) as info:
        load_pretrained(path)
    assert info.value.__cause__ is None and "\n" not in str(info.value)


def test_tied_checkpoint_with_a_stored_head_loads(tmp_path):
    """Some exports of tied models still write lm_head.weight; it is the embedding, not an error."""
    ref = R.make_reference("b", seed=2)
    ref.save_pretrained(tmp_path)
    sd = load_file(str(tmp_path / "model.safetensors"))
    assert "lm_head.weight" not in sd
    sd["lm_head.weight"] = sd["model.embed_tokens.weight"].copy()
    save_file(sd, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    model, cfg = load_pretrained(tmp_path)
    assert cfg.tie_word_embeddings and not hasattr(model, "lm_head")


# ------------------------------------------------------------------------------------------------ configs

# The hub config.json of Qwen/Qwen2.5-VL-7B-Instruct (transformers 4.x flat layout, rope_scaling + rope_theta).
HUB_7B_FLAT = {
    "architectures": ["Qwen2_5_VLForConditionalGeneration"],
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "vision_start_token_id": 151652,
    "vision_end_token_id": 151653,
    "vision_token_id": 151654,
    "image_token_id": 151655,
    "video_token_id": 151656,
    "hidden_act": "silu",
    "hidden_size": 3584,
    "initializer_range": 0.02,
    "intermediate_size": 18944,
    "max_position_embeddings": 128000,
    "max_window_layers": 28,
    "model_type": "qwen2_5_vl",
    "num_attention_heads": 28,
    "num_hidden_layers": 28,
    "num_key_value_heads": 4,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "sliding_window": 32768,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.41.2",
    "use_cache": True,
    "use_sliding_window": False,
    "vision_config": {
        "depth": 32,
        "hidden_act": "silu",
        "hidden_size": 1280,
        "intermediate_size": 3420,
        "num_heads": 16,
        "in_chans": 3,
        "out_hidden_size": 3584,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "spatial_patch_size": 14,
        "window_size": 112,
        "fullatt_block_indexes": [7, 15, 23, 31],
        "tokens_per_second": 2,
        "temporal_patch_size": 2,
    },
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
    "vocab_size": 152064,
}


def test_config_layouts_agree_with_transformers():
    """Old flat hub layout, transformers' own parse of it, and our transformers-5 export all give one config."""
    from transformers import Qwen2_5_VLConfig  # noqa: PLC0415 heavy

    flat = ModelConfig.from_hf_config(HUB_7B_FLAT)
    parsed_by_hf = ModelConfig.from_hf_config(Qwen2_5_VLConfig(**HUB_7B_FLAT).to_dict())
    assert flat == parsed_by_hf == qwen2_5_vl_7b()
    assert ModelConfig.from_hf_config({**HUB_7B_FLAT, "eos_token_id": [151645, 151643]}).eos_token_id == 151645
    exported = Qwen2_5_VLConfig(**qwen2_5_vl_7b().to_hf_config())
    assert exported.text_config.rope_parameters["mrope_section"] == [16, 24, 24]
    assert exported.vision_config.fullatt_block_indexes == [7, 15, 23, 31]
    assert ModelConfig.from_hf_config(exported.to_dict()) == qwen2_5_vl_7b()


@pytest.mark.parametrize("preset", ["qwen2_5_vl_3b", "qwen2_5_vl_7b"])
def test_full_size_presets_match_transformers_tensor_names_and_shapes(preset):
    """Every on-disk tensor of the real architectures (built on torch's meta device) is produced by the
    name table from our abstract parameters, with the same shape, and nothing else is."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration  # noqa: PLC0415 heavy

    cfg = PRESETS[preset]()
    with torch.device("meta"):
        hf = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**cfg.to_hf_config()))
    want = {mapping.canonical(k): tuple(v.shape) for k, v in hf.state_dict().items()}
    if cfg.tie_word_embeddings:
        want.pop("lm_head.weight")
    params = nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: Qwen25VL(cfg, nnx.Rngs(0))), nnx.Param))
    got = {}
    for param_path, template, _, to_hf in mapping.rows(cfg):
        value = params
        for k in param_path.split("."):
            value = value[k]
        stacked = mapping.num_layers(param_path, cfg) is not None
        one = jax.ShapeDtypeStruct(value.shape[1:] if stacked else value.shape, value.dtype)
        shape = tuple(jax.eval_shape(lambda a: to_hf(a, cfg), one).shape)
        for name in mapping.hf_names(template, cfg, param_path):
            got[name] = shape
    assert got == want


def test_non_qwen_config_dict_is_rejected():
    with pytest.raises(ValueError, match="model_type is 'qwen2_vl', expected 'qwen2_5_vl'"):
        ModelConfig.from_hf_config({**HUB_7B_FLAT, "model_type": "qwen2_vl"})


def test_import_without_torch_or_transformers(tmp_path):
    """dmx_jax.model and dmx_jax.hf import, build, save and load with torch/transformers unimportable."""
    code = f"""
import sys
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers"):
            raise ImportError("blocked " + name)
sys.meta_path.insert(0, Blocker())
import dmx_jax.model, dmx_jax.hf
from dmx_jax.model import Qwen25VL, tiny
m = Qwen25VL(tiny())
dmx_jax.hf.save_pretrained(m, {str(tmp_path)!r})
m2, cfg = dmx_jax.hf.load_pretrained({str(tmp_path)!r})
assert cfg == tiny()
assert not any(k.split(".")[0] in ("torch", "transformers") for k in sys.modules)
print("ok")
"""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(__import__("pathlib").Path(__file__).parents[1]),
    )
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


def test_bfloat16_export_equals_torch_cast(hf_folder, tmp_path):
    """load_pretrained(dtype=bfloat16) -> save_pretrained: tensors equal torch's own fp32 -> bf16 cast."""
    ref, src = hf_folder
    model, cfg = load_pretrained(src, dtype="bfloat16")
    assert cfg.param_dtype == "bfloat16"
    save_pretrained(model, tmp_path / "bf16")
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["dtype"] == "bfloat16"
    got = load_torch(str(tmp_path / "bf16" / "model.safetensors"))
    want = {k: v.to(torch.bfloat16) for k, v in load_torch(str(src / "model.safetensors")).items()}
    assert set(got) == set(want)
    for k in want:
        assert got[k].dtype == torch.bfloat16 and torch.equal(got[k], want[k]), k


def test_model_from_checkpoint_computes_in_the_requested_dtype(hf_folder):
    """read_config -> replace(dtype=...) -> load_pretrained(config=...): master weights stay float32, the
    hidden states are bfloat16 (the runner's path for an HF start), and stay close to fp32."""
    _, hf_folder = hf_folder
    cfg = read_config(hf_folder).replace(dtype="bfloat16")
    model, got_cfg = load_pretrained(hf_folder, config=cfg)
    assert got_cfg.dtype == "bfloat16" and model.cfg.dtype == "bfloat16"
    assert model.text.layers.attn.q.kernel[...].dtype == jnp.float32
    ids = np.array([[1, 5, 9, 33, 70, 2]])
    mask = np.ones_like(ids)
    pos, _ = rope_index(ids, None, mask)
    hidden, _ = model.hidden_states(jnp.asarray(ids), jnp.asarray(pos), jnp.asarray(mask))
    assert hidden.dtype == jnp.bfloat16
    ref_model, _ = load_pretrained(hf_folder)
    want = np.asarray(ref_model(ids))
    got = np.asarray(model(ids), np.float32)
    assert np.abs(got - want).max() / np.abs(want).max() < 0.05
