"""The README's "Use it as a library" block runs as written on a tiny checkpoint and a real PNG file."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image

from tests.helpers.tiny_checkpoint import write_tiny_checkpoint

README = Path(__file__).resolve().parents[1] / "README.md"


def snippet() -> str:
    text = README.read_text()
    block = re.search(r"<!-- library-snippet -->\n```python\n(.*?)```", text, re.S)
    assert block, "README lost its library snippet"
    return block.group(1)


def test_readme_library_snippet_runs(tmp_path, capsys):
    write_tiny_checkpoint(tmp_path / "ckpt")
    image = (np.random.default_rng(0).random((90, 70)) * 255).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "study.png")
    code = snippet()
    code = code.replace('"/data/Qwen2.5-VL-7B-Instruct"', repr(str(tmp_path / "ckpt")))
    code = code.replace('"study.dcm"', repr(str(tmp_path / "study.png")))
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    out = capsys.readouterr().out
    scores = scope["score_texts"]([scope["text"]], ["yes"], preset="paper")
    assert set(scores) >= {"overall", "format", "accuracy", "coordinate"}
    assert scope["arrays"]["input_ids"].shape[0] == 1 and len(scope["tokens"]) == 64
    assert str(float(scores["overall"][0]))[:4] in out or "overall" in out
