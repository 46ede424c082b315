"""A tiny random Qwen2.5-VL checkpoint folder in the real Hugging Face layout, with a byte-level BPE tokenizer.json."""

from __future__ import annotations

from flax import nnx
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from data_pipelines.tokenizer import SPECIAL_TOKENS, HFTokenizer
from dmx_jax.hf import save_pretrained
from dmx_jax.model import Qwen25VL, preset
from experiments.datasets import with_tokenizer

FINDINGS = [
    "There is a small left pleural effusion. The heart size is normal.",
    "No focal consolidation. No pneumothorax. Heart size is normal.",
    "Mild cardiomegaly. Lungs are clear.",
]


def write_tiny_checkpoint(folder) -> None:
    """config.json + model.safetensors + tokenizer.json of the `tiny` preset with the tokenizer's ids."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=500, special_tokens=list(SPECIAL_TOKENS), initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(FINDINGS * 5 + ["Generate the FINDINGS section of the radiology report."] * 5, trainer)
    folder.mkdir()
    tok.save(str(folder / "tokenizer.json"))
    cfg = with_tokenizer(preset("tiny"), HFTokenizer.from_file(folder / "tokenizer.json"))
    save_pretrained(Qwen25VL(cfg, nnx.Rngs(0)), folder, config=cfg)
