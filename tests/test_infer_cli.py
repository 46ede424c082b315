"""experiments.infer: answers from an HF folder with PNG and DICOM inputs, draws boxes, one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flax import nnx
from PIL import Image

from data_pipelines.tokenizer import train_sentencepiece
from dmx_jax.hf import save_pretrained
from dmx_jax.model import Qwen25VL
from experiments import infer
from experiments.configs import MemoryConfig
from experiments.pipeline import model_config_for
from tests.helpers.real_formats import write_dicom


class _Cfg:  # the fields model_config_for reads
    hf_checkpoint, model, dtype, memory = None, "tiny", "float32", MemoryConfig()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("infer")
    corpus = ["Is there an effusion in the right lung?", "The answer is: yes", "<think> [1, 2, 3, 4] </think>"] * 5
    tok = train_sentencepiece(corpus, 300, root / "tok")
    mcfg = model_config_for(_Cfg, tok)
    assert mcfg.text.vocab_size == tok.vocab_size and mcfg.image_token_id == tok.image_pad_id
    folder = root / "hf"
    save_pretrained(Qwen25VL(mcfg, nnx.Rngs(0)), folder, config=mcfg)
    (folder / infer.SP_MODEL).write_bytes(tok.model_proto)
    img = (np.random.default_rng(0).random((96, 80)) * 255).astype(np.uint8)
    Image.fromarray(img).save(root / "cxr.png")
    write_dicom(root / "cxr.dcm", (img.astype(np.uint16) * 16), bits_stored=12)
    return root


def test_answers_png_and_dicom_and_draws(checkpoint, tmp_path, capsys):
    out = tmp_path / "pred.png"
    rc = infer.main(
        [
            "--checkpoint",
            str(checkpoint / "hf"),
            "--image",
            str(checkpoint / "cxr.png"),
            "--image",
            str(checkpoint / "cxr.dcm"),
            "--question",
            "Is there an effusion?",
            "--reasoning",
            "--max-new-tokens",
            "8",
            "--max-pixels",
            str(56 * 56),
            "--out",
            str(out),
        ]
    )
    text = capsys.readouterr().out
    assert rc == 0 and "answer:" in text and out.is_file()
    assert Image.open(out).size[0] > 100


def test_draw_boxes_counts_cited_boxes(tmp_path):
    n = infer.draw_boxes(
        np.zeros((50, 40), np.float32),
        (40, 50),
        "<think>a [1, 2, 10, 20] b [5, 5, 30, 40]</think>",
        tmp_path / "b.png",
        "t",
    )
    assert n == 2 and (tmp_path / "b.png").is_file()


@pytest.mark.parametrize("case", ["missing_image", "no_image", "corrupt_dicom", "wrong_shape", "not_a_checkpoint"])
def test_bad_input_is_one_line_error(checkpoint, tmp_path, capsys, case):
    ckpt, image = checkpoint / "hf", checkpoint / "cxr.png"
    if case == "corrupt_dicom":
        image = tmp_path / "bad.dcm"
        image.write_bytes(b"DICM" + b"\x00" * 50)
    if case == "wrong_shape":
        ckpt = tmp_path / "wrong"
        ckpt.mkdir()
        for f in (checkpoint / "hf").iterdir():
            (ckpt / f.name).write_bytes(f.read_bytes())
        cfg = json.loads((ckpt / "config.json").read_text())
        cfg["text_config"]["intermediate_size"] = 2 * cfg["text_config"]["intermediate_size"]
        (ckpt / "config.json").write_text(json.dumps(cfg))
    if case == "not_a_checkpoint":
        ckpt = tmp_path
    args = ["--checkpoint", str(ckpt), "--question", "q?", "--max-new-tokens", "2", "--out", str(tmp_path / "o.png")]
    if case != "no_image":
        args += ["--image", str(image if case != "missing_image" else tmp_path / "nope.png")]
    assert infer.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    expect = {
        "missing_image": "nope.png",
        "no_image": "--image",
        "corrupt_dicom": "bad.dcm",
        "wrong_shape": "mlp",
        "not_a_checkpoint": "config.json",
    }[case]
    assert expect in err, err
