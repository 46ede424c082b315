"""Tokenizers round-trip and expose exact token bytes; chat rendering matches the Qwen2.5-VL template,
expands image placeholders, masks only the answer, and rescales boxes to the model frame."""

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from data_pipelines.formatting import parse_answer, reasoning_suffix, render, rescale_box_text
from data_pipelines.schema import Box, Example
from data_pipelines.tokenizer import SPECIAL_TOKENS, HFTokenizer, train_sentencepiece

TEXT = (
    "<think>1. opacity in the left lower zone [12, 34, 56, 78]; 2. no effusion</think>\n"
    "The answer is: \\boxed{left|lower {nested}} ünïcode  two  spaces\n"
)


@pytest.fixture(scope="module")
def spm(tmp_path_factory):
    corpus = ["There is a small left pleural effusion.", "No pneumothorax.", "The heart is enlarged.", TEXT] * 20
    return train_sentencepiece(corpus, 300, tmp_path_factory.mktemp("spm"))


@pytest.fixture(scope="module")
def hf_tok(tmp_path_factory):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=list(SPECIAL_TOKENS), initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(["There is a small left pleural effusion.", TEXT] * 10, trainer)
    path = tmp_path_factory.mktemp("hf") / "tokenizer.json"
    tok.save(str(path))
    return HFTokenizer.from_file(path)


@pytest.mark.parametrize("name", ["spm", "hf_tok"])
def test_round_trip_and_token_bytes(name, request):
    tok = request.getfixturevalue(name)
    ids = tok.encode(TEXT)
    assert tok.decode(ids) == TEXT
    assert b"".join(tok.token_bytes(i) for i in ids) == TEXT.encode("utf-8")
    ids = {tok.pad_id, tok.im_start_id, tok.im_end_id, tok.vision_start_id, tok.vision_end_id, tok.image_pad_id}
    assert len(ids) == 6


def test_sentencepiece_is_deterministic_and_cached(tmp_path):
    a = train_sentencepiece(["alpha beta", "gamma delta"] * 30, 120, tmp_path / "a")
    b = train_sentencepiece(["alpha beta", "gamma delta"] * 30, 120, tmp_path / "b")
    assert a.model_proto == b.model_proto
    assert len(list((tmp_path / "a").glob("spm-*.model"))) == 1


def _example():
    return Example(
        example_id="x1",
        dataset="synthetic",
        task="grounding",
        images=(np.zeros((128, 128), np.float32),),
        image_sizes=((128, 128),),
        prompt="Where is the effusion?",
        target="[64, 32, 128, 96]",
        boxes=(Box(64, 32, 128, 96, "effusion"),),
    )


def test_render_matches_the_chat_template(hf_tok):
    ex = _example()
    out = render(ex, hf_tok, [4], [(112, 112)])
    text = hf_tok.decode(out["input_ids"])
    want = (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<|vision_start|>"
        + "<|image_pad|>" * 4
        + "<|vision_end|>Where is the effusion?<|im_end|>\n<|im_start|>assistant\n"
        "[56, 28, 112, 84]<|im_end|>\n"
    )
    assert text == want
    answer_ids = out["input_ids"][out["loss_mask"] == 1]
    assert hf_tok.decode(answer_ids) == "[56, 28, 112, 84]<|im_end|>"
    assert int((out["input_ids"] == hf_tok.image_pad_id).sum()) == 4
    gen = render(ex, hf_tok, [4], [(112, 112)], with_answer=False, reasoning=True)
    assert hf_tok.decode(gen["input_ids"]).endswith("<|im_start|>assistant\n") and gen["loss_mask"].sum() == 0
    assert "\\boxed{}" in hf_tok.decode(gen["input_ids"])
    # the paper's order: question, then the reasoning instruction; instruction_first swaps them
    after = hf_tok.decode(gen["input_ids"])
    first = hf_tok.decode(
        render(ex, hf_tok, [4], [(112, 112)], with_answer=False, reasoning=True, instruction_first=True)["input_ids"]
    )
    assert f"Where is the effusion?\n{reasoning_suffix()}<|im_end|>" in after
    assert f"{reasoning_suffix()}\nWhere is the effusion?<|im_end|>" in first


def test_parse_answer_and_box_rescaling():
    assert parse_answer("<think>a</think>\nThe answer is: \\boxed{x {y} z}.") == "x {y} z"
    assert parse_answer("<think>a</think> plain") == "plain"
    assert rescale_box_text("at [10, 20, 30, 40]", (100, 200), (50, 100)) == "at [5, 10, 15, 20]"
