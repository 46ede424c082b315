"""What each stage trains and is evaluated on: the synthetic benchmark (default) or a real dataset adapter.

Both builders return a RunData: the tokenizer, the model config, and per stage either encoded rows (small,
in memory) or an (examples, encode_fn, skip_too_long) triple encoded batch by batch (real data: images are
read when a batch is drawn). Evaluation prompts are encoded up front (a few hundred examples).
"""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path
from typing import Any

import numpy as np

from data_pipelines.adapters import load_dataset
from data_pipelines.formatting import SYSTEM_PROMPT, reasoning_suffix
from data_pipelines.pipeline import DoesNotFit, EncodingConfig, RowEncoder
from data_pipelines.pipeline.align import align_rows
from data_pipelines.synthetic import SyntheticConfig, examples
from data_pipelines.synthetic.dataset import CLASSIFICATION_PROMPTS
from data_pipelines.tokenizer import HFTokenizer, train_sentencepiece
from dmx_jax.model import preset
from dmx_jax.processing import max_patch_rows, patch_rows
from experiments.data import GrainSource
from experiments.overrides import ConfigError

TRAIN_TASKS = ("findings", "impression", "vqa", "grounding", "referring", "classification")


@dataclasses.dataclass
class RunData:
    tokenizer: Any
    model_cfg: Any
    sft: Any  # encoded rows (synthetic), or a GrainSource (real data, encoded per batch)
    cold_start: Any
    rl: Any
    eval_plain: list[dict]  # left-padded plain prompts of every test example
    eval_reason: list[dict]  # left-padded reasoning prompts of the reasoning tasks
    test_examples: list
    align: list[dict] | None = None  # alignment-stage rows (synthetic studies; None: no alignment stage)
    align_eval: list[dict] | None = None


def patch_budget(cfg) -> int:
    """Static patch rows per example: data.patch_budget, else for the synthetic benchmark exactly what its
    square images need, else the most any aspect ratio can emit under data.max_pixels."""
    d = cfg.data
    if d.patch_budget:
        return d.patch_budget

    if d.source == "synthetic":
        return patch_rows(d.image_size, d.image_size, min_pixels=d.min_pixels, max_pixels=d.max_pixels)
    return max_patch_rows(d.max_pixels)


def row_encoder(
    cfg, tok, mcfg, *, reasoning: bool, prompt_only: bool = False, plain_ids: frozenset = frozenset()
) -> RowEncoder:
    """The project's one encoder (data_pipelines.pipeline.encode) set up for this run's model and pixel limits."""
    d = cfg.data
    enc = EncodingConfig(
        vision=mcfg.vision,
        min_pixels=d.min_pixels,
        max_pixels=d.max_pixels,
        reasoning=reasoning,
        prompt_only=prompt_only,
        instruction_first=d.reasoning_instruction == "before_question",
    )
    return RowEncoder(tok, enc, plain_ids)


def replay_examples(cfg, train_ex: list, n_reasoning: int) -> list:
    """round(data.cold_start_replay x n_reasoning) examples of the non-reasoning tasks, chosen by the seed."""
    others = [e for e in train_ex if e.task not in cfg.data.reasoning_tasks]
    n = min(len(others), round(cfg.data.cold_start_replay * n_reasoning))
    pick = np.random.default_rng(cfg.seed).permutation(len(others))[:n]
    return [others[i] for i in sorted(pick)]


def _grain(cfg, tok, mcfg, examples, seq_len: int, **kw) -> GrainSource:
    return GrainSource(
        examples,
        row_encoder(cfg, tok, mcfg, **kw),
        seq_len,
        patch_budget(cfg),
        skip_too_long=cfg.data.on_too_long == "skip",
        workers=cfg.data.num_workers,
    )


def encode_all(examples, tok, mcfg, cfg, seq_len: int, image_cache: dict | None = None, **kw) -> list[dict]:
    """Encode to fixed shapes; too long raises, or with data.on_too_long="skip" is dropped and counted.
    Rows of one example encoded with the same `image_cache` share their pixel array."""
    encoder, budget = row_encoder(cfg, tok, mcfg, **kw), patch_budget(cfg)
    rows, skipped = [], []
    for e in examples:
        try:
            rows.append(encoder(e, seq_len=seq_len, patch_budget=budget, image_cache=image_cache))
        except DoesNotFit as err:
            if cfg.data.on_too_long != "skip":
                raise DoesNotFit(
                    f"{err} (raise data.max_seq_len / data.reasoning_seq_len, or --set data.on_too_long=skip)"
                ) from None
            skipped.append(e.example_id)
    if skipped:
        print(
            f"[data] skipped {len(skipped)} of {len(examples)} examples longer than {seq_len} tokens "
            f"(data.on_too_long=skip), e.g. {skipped[0]}",
            flush=True,
        )
    return rows


def _eval_rows(test_ex, tok, mcfg, cfg):
    d, cache = cfg.data, {}
    plain = encode_all(test_ex, tok, mcfg, cfg, d.prompt_len, cache, reasoning=False, prompt_only=True)
    reasoning_test = [e for e in test_ex if e.task in d.reasoning_tasks]
    if d.source != "synthetic" and not reasoning_test:
        reasoning_test = test_ex  # a report-only dataset: the reasoning stages answer with <think>
    reason = encode_all(reasoning_test, tok, mcfg, cfg, d.reasoning_prompt_len, cache, reasoning=True, prompt_only=True)
    return plain, reason


def build_tokenizer(train_examples, vocab_size: int, cache_dir: Path):
    corpus = []
    for e in train_examples:
        corpus += [e.prompt, e.target, e.meta.get("reasoning", "")]
    corpus += [SYSTEM_PROMPT, reasoning_suffix(), "system\n", "user\n", "assistant\n"]
    return train_sentencepiece(corpus, vocab_size, cache_dir)


def with_tokenizer(mcfg, tok, video_token_id: int | None = None):
    """`mcfg` with the tokenizer's vocabulary size and special ids (video: the given id, else the last id)."""
    text = dataclasses.replace(mcfg.text, vocab_size=tok.vocab_size)
    video = tok.vocab_size - 1 if video_token_id is None else video_token_id
    return dataclasses.replace(
        mcfg,
        text=text,
        image_token_id=tok.image_pad_id,
        vision_start_token_id=tok.vision_start_id,
        vision_end_token_id=tok.vision_end_id,
        video_token_id=video,
        bos_token_id=tok.im_start_id,
        eos_token_id=tok.im_end_id,
        pad_token_id=tok.pad_id,
    )


def model_config_for(cfg, tok):
    """The preset with the tokenizer's vocabulary and special ids (from-scratch runs); checkpoints keep theirs."""
    mcfg = preset(cfg.model)
    if cfg.hf_checkpoint is None and cfg.model in ("tiny", "small"):
        mcfg = with_tokenizer(mcfg, tok)
    return dataclasses.replace(mcfg, dtype=cfg.dtype, **cfg.memory.model_overrides())


def synthetic_examples(cfg) -> tuple[list, list]:
    """(train, test) synthetic Examples of the training tasks. data.vqa_family_weights and data.train_task_mix
    shape the train split only: the held-out split keeps the benchmark's tasks and uniform question families,
    so scores stay comparable."""
    d = cfg.data
    scfg = SyntheticConfig(
        image_size=d.image_size,
        seed=cfg.seed,
        grounding_locations=d.grounding_locations,
        grounding_trace=d.grounding_trace,
        vqa_trace=d.vqa_trace,
        trace_box_jitter=d.trace_box_jitter,
    )
    train_cfg = dataclasses.replace(
        scfg, vqa_family_weights=d.vqa_family_weights, **({"task_mix": d.train_task_mix} if d.train_task_mix else {})
    )
    train_ex = [e for e in (examples("train", i, train_cfg) for i in range(d.train_examples)) if e.task in TRAIN_TASKS]
    test_ex = [e for e in (examples("test", i, scfg) for i in range(cfg.eval.examples)) if e.task in TRAIN_TASKS]
    return train_ex, test_ex


def _readout_prompt(cfg, tok, mcfg):
    """example -> the left-padded prompt row (its study's image + the classification question) that the
    alignment stage's decoder read-out runs on."""
    encoder, budget = row_encoder(cfg, tok, mcfg, reasoning=False, prompt_only=True), patch_budget(cfg)

    def prompt_row(ex):
        one = dataclasses.replace(
            ex,
            images=ex.images[-1:],
            image_sizes=ex.image_sizes[-1:],
            task="classification",
            prompt=CLASSIFICATION_PROMPTS[0],
            example_id=ex.example_id + "/readout",
        )
        return encoder(one, seq_len=cfg.data.prompt_len, patch_budget=budget)

    return prompt_row


def synthetic_data(cfg, run_dir: Path, model_cfg=None) -> RunData:
    """The synthetic benchmark encoded for the run's model: a checkpoint's (`model_cfg`, its tokenizer.json),
    or a from-scratch preset with a SentencePiece tokenizer trained on the train split."""
    d = cfg.data
    print(f"[data] rendering {d.train_examples} train + {cfg.eval.examples} test synthetic studies", flush=True)
    train_ex, test_ex = synthetic_examples(cfg)
    if model_cfg is not None:
        tok, mcfg = checkpoint_tokenizer(cfg, model_cfg), model_cfg
    else:
        tok = build_tokenizer(train_ex, d.vocab_size, run_dir / "tokenizer")
        mcfg = model_config_for(cfg, tok)
    reasoning_train = [e for e in train_ex if e.task in d.reasoning_tasks]
    cache: dict = {}
    sft = encode_all(train_ex, tok, mcfg, cfg, d.max_seq_len, cache, reasoning=False)
    cold = encode_all(reasoning_train, tok, mcfg, cfg, d.reasoning_seq_len, cache, reasoning=True)
    cold += encode_all(
        replay_examples(cfg, train_ex, len(cold)), tok, mcfg, cfg, d.reasoning_seq_len, cache, reasoning=False
    )
    rl = encode_all(reasoning_train, tok, mcfg, cfg, d.reasoning_prompt_len, cache, reasoning=True, prompt_only=True)
    plain, reason = _eval_rows(test_ex, tok, mcfg, cfg)
    align = align_eval = None
    if cfg.align.steps > 0:
        kw = dict(
            patch_budget=patch_budget(cfg),
            min_pixels=d.min_pixels,
            max_pixels=d.max_pixels,
            prompt_row=_readout_prompt(cfg, tok, mcfg) if cfg.align.decoder_readout else None,
        )
        align, align_eval = align_rows(train_ex, mcfg.vision, **kw), align_rows(test_ex, mcfg.vision, **kw)
    print(
        f"[data] {len(sft)} SFT rows, {len(cold)} reasoning rows, {len(rl)} RL prompts, {len(plain)} eval prompts; "
        f"vocab {tok.vocab_size}, seq {d.max_seq_len}/{d.reasoning_seq_len}, patch budget {patch_budget(cfg)}",
        flush=True,
    )
    return RunData(tok, mcfg, sft, cold, rl, plain, reason, test_ex, align, align_eval)


def checkpoint_tokenizer(cfg, model_cfg):
    """data.tokenizer, else the checkpoint's tokenizer.json, checked against the model's image token id."""
    tok_path = cfg.data.tokenizer or (Path(cfg.hf_checkpoint) / "tokenizer.json" if cfg.hf_checkpoint else None)
    if tok_path is None or not Path(tok_path).is_file():
        raise ConfigError(
            f"data.tokenizer: no tokenizer.json at {tok_path} (a checkpoint needs its own "
            f"tokenizer.json; give the checkpoint's tokenizer.json)"
        )
    tok = HFTokenizer.from_file(tok_path)
    if tok.image_pad_id != model_cfg.image_token_id:
        raise ConfigError(
            f"data.tokenizer {tok_path}: <|image_pad|> is id {tok.image_pad_id} but the model's "
            f"image_token_id is {model_cfg.image_token_id}; tokenizer and checkpoint do not match"
        )
    return tok


def real_data(cfg, run_dir: Path, model_cfg) -> RunData:
    """An adapter's train split (lazy), its test split (eval), and the checkpoint's tokenizer.

    Cold start reads `data.cold_start_file` (JSONL written by `python -m data_pipelines.cold_start`, teacher
    traces checked against the ground truth); without it the cold-start stage teaches the output format only.
    """
    d = cfg.data
    if d.root is None:
        raise ConfigError(f"data.root must point at the {d.source} dataset (data.source={d.source!r})")
    tok = checkpoint_tokenizer(cfg, model_cfg)
    print(f"[data] reading {d.source} from {d.root}", flush=True)
    train_ex = list(itertools.islice(load_dataset(d.source, d.root, split="train"), d.train_examples))
    test_ex = list(itertools.islice(load_dataset(d.source, d.root, split="test"), cfg.eval.examples))
    if not train_ex or not test_ex:
        raise ConfigError(f"data.source={d.source!r} at {d.root}: {len(train_ex)} train / {len(test_ex)} test examples")
    reasoning_train = [e for e in train_ex if e.task in d.reasoning_tasks]
    if not reasoning_train:
        print(f"[data] no {d.reasoning_tasks} examples in {d.source}; cold start and RL use every task", flush=True)
        reasoning_train = train_ex
    cold_ex = reasoning_train
    if d.cold_start_file:
        cold_ex = list(load_dataset("generic", d.cold_start_file, split="train"))
        print(f"[data] cold start: {len(cold_ex)} teacher traces from {d.cold_start_file}", flush=True)
    else:
        print(
            "[data] cold start: no data.cold_start_file; training the <think>/\\boxed{} format on the answers only",
            flush=True,
        )
    sft = _grain(cfg, tok, model_cfg, train_ex, d.max_seq_len, reasoning=False)
    # no replay when cold start already trains on every example (a dataset without reasoning tasks)
    replay = [] if cold_ex is train_ex else replay_examples(cfg, train_ex, len(cold_ex))
    cold = _grain(
        cfg,
        tok,
        model_cfg,
        cold_ex + replay,
        d.reasoning_seq_len,
        reasoning=True,
        plain_ids=frozenset(e.example_id for e in replay),
    )
    if replay:
        print(
            f"[data] cold start: {len(replay)} plain rows of other tasks replayed (data.cold_start_replay)", flush=True
        )
    rl = _grain(cfg, tok, model_cfg, reasoning_train, d.reasoning_prompt_len, reasoning=True, prompt_only=True)
    plain, reason = _eval_rows(test_ex, tok, model_cfg, cfg)
    print(
        f"[data] {len(train_ex)} train examples ({len(reasoning_train)} for RL), {len(plain)} eval prompts", flush=True
    )
    return RunData(tok, model_cfg, sft, cold, rl, plain, reason, test_ex)
