"""The 3B/7B presets' sequence budgets hold one real-size CXR in every stage's row kind.

A 3056x2544 radiograph (synthetic pixels, both orientations) at the preset's max_pixels goes through the
project's own row encoder (data_pipelines.pipeline.encode) as: a plain SFT row with a long report (sft,
data.max_seq_len), a reasoning row whose <think> trace + answer is exactly the preset's GRPO max_new_tokens as
the model sees it (cold start, data.reasoning_seq_len), a plain generation prompt (evaluation, data.prompt_len)
and a reasoning prompt (RL rollouts and reasoning evaluation, data.reasoning_prompt_len), each with the longest
fixed prompt of the real-data adapters. The image patches must fit the static patch budget.

Tokenizer: a Qwen2.5-VL tokenizer.json when one is given ($DMX_QWEN_TOKENIZER, a file or folder); otherwise a
byte-level BPE with Qwen2's pre-tokenizer and special tokens, trained here on the repository's English docs and
the synthetic reports' phrases with a Qwen-sized vocabulary cap. It ends with ~6k tokens, far fewer than Qwen's
151,665, and has never seen the report below (measured: 3.4 characters per token on it, where Qwen-family BPEs
give about 4 on English), so text counts come out higher than Qwen's would: the check errs on the safe side.
No tokenizer can emit fewer tokens than Qwen2's pre-tokenizer pieces: that lower bound is printed beside each
count (pytest -s).
"""

import ast
import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from data_pipelines.adapters import _common as prompts
from data_pipelines.formatting import rescale_box_text
from data_pipelines.pipeline.encode import EncodingConfig, encode_example, measure
from data_pipelines.schema import Example
from data_pipelines.tokenizer import SPECIAL_TOKENS, HFTokenizer
from dmx_jax.model import preset as model_preset
from dmx_jax.processing import smart_resize
from experiments.configs import PRESETS
from experiments.datasets import patch_budget

ROOT = Path(__file__).resolve().parents[1]
QWEN_VOCAB = 151_665
# Qwen2's pre-tokenizer split (tokenizer.json of Qwen2.5-VL): digits are single pieces.
QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)

LONG_REPORT = (  # a long MIMIC-style FINDINGS section (~230 words), not part of the tokenizer's training text
    "PA and lateral views of the chest were obtained. Compared to the prior radiograph from three days earlier, "
    "there has been interval placement of a right internal jugular central venous catheter with its tip "
    "terminating in the mid superior vena cava. The endotracheal tube terminates approximately 4.5 cm above the "
    "carina. An enteric tube courses below the diaphragm with the tip in the gastric body, side port beyond the "
    "gastroesophageal junction. Lung volumes are low, accentuating the bronchovascular markings. There is "
    "persistent moderate to severe cardiomegaly with a widened mediastinal contour, likely related to the low "
    "lung volumes and AP technique. Moderate pulmonary vascular congestion with mild interstitial edema has "
    "slightly improved. Bibasilar opacities, left greater than right, likely reflect atelectasis, although "
    "superimposed aspiration or pneumonia in the left lower lobe cannot be excluded in the appropriate clinical "
    "setting. Small bilateral pleural effusions are layering posteriorly and are not significantly changed. "
    "There is no pneumothorax. A calcified granuloma projects over the right upper lobe, unchanged. Median "
    "sternotomy wires are intact and aligned, and mediastinal clips are again noted from prior coronary artery "
    "bypass grafting. Degenerative changes of the thoracic spine with mild dextroscoliosis are seen. Old healed "
    "fractures of the left fifth through seventh posterolateral ribs are again demonstrated. Surgical clips in "
    "the right upper quadrant are consistent with prior cholecystectomy. No free intraperitoneal air beneath "
    "the hemidiaphragms. Recommend follow-up radiographs after diuresis to reassess the left lower lobe."
)

STEP = (
    "{k}. There is a focal opacity in the left lower lung zone with [{x1}, {y1}, {x2}, {y2}], partly obscuring "
    "the hemidiaphragm and compatible with atelectasis or early consolidation; "
)
PROMPTS = (
    prompts.FINDINGS_PROMPT,
    prompts.IMPRESSION_PROMPT,
    prompts.CLASSIFICATION_PROMPT,
    prompts.GROUNDING_PROMPT.format(phrase="left lower lobe consolidation with small pleural effusion"),
    prompts.REFERRING_PROMPT.format(box="[1203, 1876, 2544, 3011]"),
)


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    given = os.environ.get("DMX_QWEN_TOKENIZER")
    if given:
        return HFTokenizer.from_file(given)
    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT), "isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    t.decoder = decoders.ByteLevel()
    corpus = [p.read_text() for p in (ROOT / "README.md", ROOT / "BUILD_NOTES.md")]
    corpus += [p.read_text() for p in (ROOT / "data_pipelines" / "templates").glob("*.txt")]
    for p in (ROOT / "data_pipelines" / "synthetic").glob("*.py"):  # the synthetic reports' radiology phrases
        corpus += [
            n.value
            for n in ast.walk(ast.parse(p.read_text()))
            if isinstance(n, ast.Constant) and isinstance(n.value, str)
        ]
    trainer = trainers.BpeTrainer(
        vocab_size=QWEN_VOCAB,
        special_tokens=list(SPECIAL_TOKENS) + ["<think>", "</think>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    t.train_from_iterator(corpus, trainer)
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    t.save(str(path))
    return HFTokenizer.from_file(path)


class QwenPieces:
    """Counts Qwen2 pre-tokenizer pieces: BPE never merges across them, so a row rendered with this is a lower
    bound on the same row under any Qwen2.5-VL tokenizer."""

    pad_id = eos_id = 0
    im_start_id, im_end_id, vision_start_id, vision_end_id, image_pad_id = 1, 2, 3, 4, 5

    def __init__(self):
        self._split = pre_tokenizers.Split(Regex(QWEN_SPLIT), "isolated")

    def encode(self, text: str) -> list[int]:
        return [7] * len(self._split.pre_tokenize_str(text))


def _trace(tok, n_tokens: int, stored: tuple[int, int], model: tuple[int, int]) -> str:
    """A box-citing <think> trace + boxed answer of exactly n_tokens - 1 tokens (+ <|im_end|>) as the model sees
    it: written in model-frame pixels (3-digit boxes that stay 3-digit through the round trip), stored in the
    image's own pixels like a dataset would, so the encoder's rescaling brings it back."""
    tail = "</think>\nThe answer is: \\boxed{left lower lobe atelectasis|pleural effusion}."
    rng = np.random.default_rng(0)
    body, k = "<think>", 1
    while len(tok.encode(body + tail)) < n_tokens:
        x1, y1 = rng.integers(110, 300, 2)
        body += STEP.format(k=k, x1=x1, y1=y1, x2=x1 + rng.integers(10, 120), y2=y1 + rng.integers(10, 120))
        k += 1
    ids = tok.encode(body)
    want = n_tokens - 1 - len(tok.encode(tail))
    while True:  # cut the body to the exact count (a cut can re-merge at the seam, so re-check)
        text = tok.decode(ids[:want]) + tail
        n = len(tok.encode(text))
        if n == n_tokens - 1:
            return rescale_box_text(text, model, stored)
        want += (n_tokens - 1) - n


def _study(w: int, h: int, prompt: str, target: str, trace: str | None = None) -> Example:
    pixels = np.random.default_rng(w).random((h, w), dtype=np.float32)
    return Example(
        example_id=f"cxr{w}x{h}",
        dataset="mimic_cxr",
        task="findings",
        images=(pixels,),
        image_sizes=((w, h),),
        prompt=prompt,
        target=target,
        meta={"reasoning": trace} if trace else {},
    )


@pytest.mark.parametrize("name", ["qwen2_5_vl_3b", "qwen2_5_vl_7b"])
def test_every_stage_row_of_a_real_size_cxr_fits_the_preset(name, tok):
    cfg = PRESETS[name]()
    d, vision = cfg.data, model_preset(cfg.model).vision
    budget = patch_budget(cfg)
    n_new = cfg.rl.algo.max_new_tokens
    base = EncodingConfig(vision=vision, min_pixels=d.min_pixels, max_pixels=d.max_pixels)
    kinds = {  # row kind -> (encoding, seq budget)
        "sft": (base, d.max_seq_len),
        "cold_start": (dataclasses.replace(base, reasoning=True), d.reasoning_seq_len),
        "eval_prompt": (dataclasses.replace(base, prompt_only=True), d.prompt_len),
        "reasoning_prompt": (dataclasses.replace(base, reasoning=True, prompt_only=True), d.reasoning_prompt_len),
    }
    report = []
    for w, h in ((3056, 2544), (2544, 3056)):
        rh, rw = smart_resize(h, w, min_pixels=d.min_pixels, max_pixels=d.max_pixels)
        trace = _trace(tok, n_new, (w, h), (rw, rh))
        cache: dict = {}
        for kind, (enc, seq_len) in kinds.items():
            worst = (0, 0, "")
            for prompt in PROMPTS:  # the longest rendered prompt of the adapters
                ex = _study(w, h, prompt, LONG_REPORT, trace if enc.reasoning else None)
                tokens, patches = measure(ex, tok, enc, cache)
                assert patches == 1280 and patches <= budget, (w, h, patches, budget)  # 320 image tokens
                worst = max(worst, (tokens, patches, prompt))
            tokens, patches, prompt = worst
            lower = measure(
                _study(w, h, prompt, LONG_REPORT, trace if enc.reasoning else None), QwenPieces(), enc, cache
            )[0]
            report.append(f"{name} {w}x{h} {kind}: {tokens} tokens (Qwen lower bound {lower}) / {seq_len}")
            assert lower <= tokens, report[-1]
            assert tokens <= seq_len, "does not fit: " + report[-1]
            row = encode_example(
                _study(w, h, prompt, LONG_REPORT, trace if enc.reasoning else None),
                tok,
                enc,
                seq_len=seq_len,
                patch_budget=budget,
                image_cache=cache,
            )
            assert row["input_ids"].shape == (seq_len,) and row["pixel_values"].shape[0] == budget
            if kind == "cold_start":  # the trace is the preset's full generation length, <|im_end|> included
                assert int(row["loss_mask"].sum()) == n_new
    print("\n".join(report))
