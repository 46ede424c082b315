"""HF round trip (dmx-jax -> save_pretrained -> transformers) and clear errors for bad folders."""
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

from dmx_jax.hf import CheckpointError, load_pretrained, save_pretrained
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
    from transformers import Qwen2_5_VLForConditionalGeneration
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
