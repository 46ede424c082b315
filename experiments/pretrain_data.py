"""What the miniature base's recipe trains and probes on: its config (PretrainConfig), the tokenizer's corpus,
the model preset at the tokenizer's vocabulary, and the row sources of the pretraining corpus, the alignment
stage, the held-out probe prompts and the teacher-forcing rows, all encoded by the project's row encoder."""

from __future__ import annotations

import dataclasses

import numpy as np

from data_pipelines.formatting import SYSTEM_PROMPT, reasoning_suffix
from data_pipelines.pipeline import DoesNotFit, EncodingConfig, RowEncoder, stack_rows
from data_pipelines.pipeline.align import align_rows
from data_pipelines.synthetic import SyntheticConfig, examples
from data_pipelines.synthetic.pretrain import (
    CORPUS_MIX,
    PRETRAIN_SEED,
    PROBE_START,
    PROMPTS,
    pretrain_example,
    probe_examples,
)
from dmx_jax.model import preset
from dmx_jax.processing import patch_rows
from dmx_jax.training.optim import OptimConfig
from experiments.data import IndexedSource
from experiments.datasets import with_tokenizer


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    """The recipe: model and tokenizer sizes, pixel limits, the alignment, corpus and focus stages, saves and
    probes (`--set key=value` overrides any field)."""

    seed: int = 0  # parameter init and nothing else: the corpus is fixed by its own seed
    model: str = "base"  # dmx_jax.model preset
    image_size: int = 128  # synthetic render size (the benchmark's)
    min_pixels: int = 56 * 56
    max_pixels: int = 168 * 168  # 128 px studies resized to 140 px: 10 x 10 patches, 25 image tokens
    seq_len: int = 160  # rows: chat template + 36 image tokens + prompt + answer
    vocab_size: int = 2048
    tokenizer_studies: int = 1500  # studies whose texts (corpus + report-style texts) train the tokenizer
    align_steps: int = 2400  # first: the tower learns the study's labels, sides and boxes
    align_batch_size: int = 32
    align_optim: OptimConfig = OptimConfig(learning_rate=1e-3, warmup_steps=20, total_steps=2400)
    align_head_lr: float = 1e-2
    align_readout: bool = False  # the decoder also reads the targets at a describe prompt's answer start
    readout_len: int = 72  # the alignment read-out's prompt row (describe prompt), tokens
    vision_lr: float = 1e-4  # tower + merger in the corpus stage: keep what the alignment taught
    loss_weighting: str = "row"  # "row": each row's answer weighs alike (a yes/no answer as much as a
    # 40-token box list); "token": every answer token alike
    steps: int = 1200
    batch_size: int = 32
    optim: OptimConfig = OptimConfig(learning_rate=1e-3, warmup_steps=50, total_steps=1200, weight_decay=0.01)
    focus_steps: int = 1500  # then the detection-heavy mix (FOCUS_MIX) on fresh studies; its cosine
    # schedule spans focus_steps (focus_optim.total_steps is ignored)
    focus_optim: OptimConfig = OptimConfig(learning_rate=5e-4, warmup_steps=50, total_steps=0, weight_decay=0.01)
    focus_vision_lr: float = 3e-4  # the tower learns to localise in the focus stage
    save_every: int = 200
    probe_every: int = 150
    probe_studies: int = 96
    align_probe_studies: int = 256  # held-out studies whose pooled-head AUC per finding the align probe reads
    probe_max_new_tokens: int = 48

    def __post_init__(self):
        for name in ("steps", "batch_size", "save_every", "probe_every", "probe_studies", "seq_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"pretrain.{name}={getattr(self, name)} must be >= 1")
        if self.focus_steps < 0:
            raise ValueError(f"pretrain.focus_steps={self.focus_steps} must be >= 0")
        if self.loss_weighting not in ("row", "token"):
            raise ValueError(f"pretrain.loss_weighting={self.loss_weighting!r} must be 'row' or 'token'")


def tokenizer_corpus(cfg: PretrainConfig) -> list[str]:
    """Texts the tokenizer learns from: pretraining prompts and answers, plus report, VQA and reasoning texts
    of benchmark-style examples rendered under the pretraining seed (never a benchmark study)."""
    scfg = SyntheticConfig(image_size=cfg.image_size, seed=PRETRAIN_SEED)
    out = [SYSTEM_PROMPT, reasoning_suffix(), "system\n", "user\n", "assistant\n"]
    for i in range(cfg.tokenizer_studies):
        e = pretrain_example(i, cfg.image_size)
        b = examples("train", i, scfg)
        out += [e.prompt, e.target, b.prompt, b.target, b.meta.get("reasoning", "")]
    return out


def model_config(cfg: PretrainConfig, tok):
    """The preset with the tokenizer's vocabulary and special ids."""
    return with_tokenizer(preset(cfg.model), tok, video_token_id=tok.token_to_id("<|video_pad|>"))


def patch_budget(cfg: PretrainConfig) -> int:
    return patch_rows(cfg.image_size, cfg.image_size, min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels)


def row_encoder(cfg: PretrainConfig, tok, mcfg, *, prompt_only: bool = False):
    """The project's row encoder at the recipe's pixel limits (prompt_only: left-padded generation prompts)."""
    return RowEncoder(
        tok,
        EncodingConfig(
            vision=mcfg.vision, min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels, prompt_only=prompt_only
        ),
    )


def row_source(cfg: PretrainConfig, tok, mcfg, mix=None, start: int = 0):
    """IndexedSource of training rows: row i encodes pretrain_example(start + i, mix) (mix: CORPUS_MIX by
    default); a row longer than seq_len (rare: many findings described) is replaced by the row of index
    + 2**38, deterministically."""
    mix = mix or CORPUS_MIX
    encoder = row_encoder(cfg, tok, mcfg)
    budget = patch_budget(cfg)

    def row_fn(i: int) -> dict:
        i += start
        while True:
            try:
                return encoder(pretrain_example(i, cfg.image_size, mix), seq_len=cfg.seq_len, patch_budget=budget)
            except DoesNotFit:
                i += 1 << 38

    return IndexedSource(row_fn)


def align_source(cfg: PretrainConfig, tok, mcfg):
    """IndexedSource of alignment rows: study i's pixels and label / side / box targets, plus the left-padded
    describe prompt that the decoder read-out runs on (dmx_jax.training.align, decoder_readout=True)."""
    encoder = row_encoder(cfg, tok, mcfg, prompt_only=True)
    budget = patch_budget(cfg)

    def prompt_row(ex):
        return encoder(
            dataclasses.replace(ex, prompt=PROMPTS["describe"][0]), seq_len=cfg.readout_len, patch_budget=budget
        )

    def row_fn(i: int) -> dict:
        return align_rows(
            [pretrain_example(i, cfg.image_size)],
            mcfg.vision,
            patch_budget=budget,
            min_pixels=cfg.min_pixels,
            max_pixels=cfg.max_pixels,
            dedupe=False,
            prompt_row=prompt_row if cfg.align_readout else None,
        )[0]

    return IndexedSource(row_fn)


def probe_groups(cfg: PretrainConfig, tok, mcfg, tasks: tuple[str, ...] = ("vqa", "grounding")) -> list:
    """[(prompt arrays, rows, max_new_tokens)] of the held-out probe prompts of `tasks` (presence questions are
    task 'vqa', detection prompts 'grounding'), one compiled shape."""
    encoder = row_encoder(cfg, tok, mcfg, prompt_only=True)
    rows = [
        encoder(e, seq_len=cfg.seq_len, patch_budget=patch_budget(cfg))
        for e in probe_examples(cfg.probe_studies, cfg.image_size)
        if e.task in tasks
    ]
    arrays, _ = stack_rows(rows)
    arrays.pop("loss_mask")
    return [(arrays, [r["meta"] for r in rows], cfg.probe_max_new_tokens)]


def task_rows(cfg: PretrainConfig, tok, mcfg, n: int = 96) -> tuple[dict, np.ndarray]:
    """Teacher-forcing rows of every task on held-out probe studies (index PROBE_START + i) and their task names."""
    source = row_source(cfg, tok, mcfg)
    rows = [source.row_fn(PROBE_START + i) for i in range(n)]
    arrays, _ = stack_rows(rows)
    return arrays, np.asarray([r["meta"]["question_type"] for r in rows])
