"""Experiment configs as Python presets: `tiny` (CPU default), `tiny_base`, `qwen2_5_vl_3b`, `qwen2_5_vl_7b`.

Plain frozen dataclasses (big_vision style: one function per preset, no framework). Every field can be
overridden from the command line with `--set section.field=value`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

from dmx_jax.model.config import ATTENTION_CHOICES, DTYPES, REMAT_CHOICES
from dmx_jax.model.lora import LoraConfig
from dmx_jax.rewards.combine import PRESETS as REWARD_PRESETS
from dmx_jax.sharding import MeshConfig
from dmx_jax.training.grpo_loss import GRPOConfig
from dmx_jax.training.optim import OptimConfig


@dataclasses.dataclass(frozen=True)
class DataConfig:
    source: str = "synthetic"  # "synthetic" | an adapter name (mimic_cxr, chexpert, vindr, ms_cxr, ...)
    root: str | None = None  # dataset root for real adapters
    image_size: int = 128  # synthetic render size
    max_pixels: int = 128 * 128  # processor cap (paper checkpoint: 262144)
    min_pixels: int = 56 * 56
    max_seq_len: int = 160  # plain SFT rows (prompt + answer), tokens
    patch_budget: int | None = None  # static patch rows per example (None: derived from the images / max_pixels)
    on_too_long: Literal["error", "skip"] = "skip"  # skip: too-long examples are dropped and counted (metrics
    # data/skipped_too_long, summary.md); error: stop at the first
    reasoning_seq_len: int = 448  # cold-start rows: prompt + reasoning suffix + <think> trace + answer
    prompt_len: int = 80  # left-padded plain prompts for evaluation (tiny default: longest 60)
    reasoning_prompt_len: int = 192  # left-padded reasoning prompts (RL rollouts, evaluation; longest 177)
    reasoning_tasks: tuple[str, ...] = ("vqa", "grounding", "referring")  # tasks trained/evaluated with <think>
    train_examples: int = 2048
    eval_examples: int = 64
    vocab_size: int = 2048  # tiny SentencePiece vocabulary (ignored with an HF tokenizer)
    tokenizer: str | None = None  # path to a Qwen2.5-VL tokenizer.json (default: hf_checkpoint's)
    cold_start_file: str | None = None  # JSONL of teacher reasoning traces (python -m data_pipelines.cold_start)
    cold_start_replay: float = 0.25  # plain rows of the other tasks (reports) mixed into cold start, as a
    # fraction of its reasoning rows, so the reasoning stages keep them
    vqa_family_weights: tuple[tuple[str, float], ...] = ()  # synthetic: VQA question-family weights (vqa.VQA_FAMILIES)
    train_task_mix: tuple[tuple[str, float], ...] = ()  # synthetic: train-split (task, weight); (): the benchmark's
    grounding_locations: bool = False  # synthetic: grounding prompts also name side and zone (guessable boxes)
    grounding_trace: Literal["anatomy_first", "phrase_first", "box_first"] = "anatomy_first"  # synthetic traces
    vqa_trace: Literal["evidence", "question_first"] = "evidence"  # synthetic: VQA traces (question named first)
    trace_box_jitter: int = 0  # synthetic: grounding traces cite moved boxes that their answer copies
    reasoning_instruction: Literal["after_question", "before_question"] = "after_question"  # where reasoning
    # prompts put the instruction (the paper: after the question)
    num_workers: int = 0


@dataclasses.dataclass(frozen=True)
class AlignConfig:
    """The alignment stage before SFT (synthetic data, from-scratch models): the vision tower + merger learn
    labels, sides and boxes from pixels through a pooled linear head. steps=0 skips it (pretrained towers)."""

    steps: int = 0
    batch_size: int = 32
    optim: OptimConfig = OptimConfig(learning_rate=1e-3, warmup_steps=20, total_steps=300)
    head_lr: float = 1e-2
    save_every: int = 150
    decoder_readout: bool = False  # also train the text decoder to read the same targets at the answer start


@dataclasses.dataclass(frozen=True)
class StageConfig:
    steps: int = 100
    batch_size: int = 8
    optim: OptimConfig = OptimConfig()
    save_every: int = 50
    vision_lr: float | None = None  # the vision tower + merger at their own learning rate (None: optim's;
    # 0: frozen, which keeps a pretrained base's vision when fine-tuning)
    frozen: tuple[str, ...] = ()  # parameter-path prefixes that do not train (e.g. ("vision.merger",)):
    # no optimizer state, left out of the clipping norm
    loss_weighting: Literal["token", "row"] = "token"  # SFT loss: every answer token alike, or every row alike
    pad_multiple: int = 0  # > 0: in-memory batches cut to their longest row rounded up to this many
    # tokens (same loss, less padding, one compile per length); 0: one shape


@dataclasses.dataclass(frozen=True)
class TeacherConfig:
    """OpenAI-compatible endpoint for cold-start synthesis on real data (key read from the environment)."""

    base_url: str | None = None
    model: str = ""
    api_key_env: str = "DMX_TEACHER_API_KEY"
    max_retries: int = 4
    timeout_s: float = 60.0


@dataclasses.dataclass(frozen=True)
class RLConfig:
    steps: int = 30
    prompts_per_step: int = 4
    optim: OptimConfig = OptimConfig(learning_rate=1e-5, warmup_steps=0, schedule="constant")
    algo: GRPOConfig = GRPOConfig(max_new_tokens=256)
    reward_preset: str = "grounded"  # dmx_jax.rewards.combine.PRESETS: "paper" (published) | "grounded" |
    # "grounded_answer" (box terms on the boxed answer's boxes)
    reward_bytes_per_token: int | None = None  # reward decoder budget per new token (None: longest token, no cut)
    reward_answer_bytes: int | None = None  # boxed-answer buffer (None: the whole completion buffer)
    save_every: int = 10
    vision_lr: float | None = None  # as StageConfig.vision_lr
    frozen: tuple[str, ...] = ()  # as StageConfig.frozen
    lr_schedule_unit: Literal["rollout", "update"] = "rollout"  # what the optim schedule counts: GRPO steps
    # (verl, EasyR1) or optimizer updates (epochs x mini-batches per step)
    eval_every: int = 0  # > 0: validation every N steps on eval_prompts held-out reasoning prompts
    eval_prompts: int = 32  # (greedy answers, the training reward; val/* in metrics and tensorboard)

    def reward_config(self):
        """The reward preset with this run's buffer caps (cut rows are counted in reward/truncated)."""
        return dataclasses.replace(
            REWARD_PRESETS[self.reward_preset],
            bytes_per_token=self.reward_bytes_per_token,
            answer_bytes=self.reward_answer_bytes,
        )


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    examples: int = 64
    max_new_tokens: int = 80  # plain answers (reports need ~70 tokens at vocab 2048)
    reasoning_max_new_tokens: int = 256  # <think> trace + boxed answer
    arena_judges: tuple[str, ...] = ("rubric",)
    bootstrap: int = 1000
    image_control: bool = True  # also answer VQA/grounding with each prompt's image swapped for another
    # prompt's: scores that do not drop mean the model is not looking


@dataclasses.dataclass(frozen=True)
class MemoryConfig:
    """Memory controls, copied into the model config and the step builders by the stage runner.

    Choose them with `python -m experiments.aot` (per-chip peak of every step on a TPU slice, compiled on CPU).
    """

    remat: Literal["none", "dots", "full", "offload"] = "none"  # text decoder layers
    vision_remat: Literal["none", "dots", "full", "offload"] = "none"  # vision blocks
    attention: Literal["xla", "chunked", "cudnn", "splash"] = "xla"  # dmx_jax.model.attention
    attention_block: int = 512  # key block of chunked / splash attention
    loss_chunk: int = 0  # sequence positions per vocab-projection chunk of the loss (0: all at once)
    kv_cache_dtype: str | None = None  # rollout KV cache dtype (None: the compute dtype)
    ref_dtype: str | None = None  # GRPO reference-model parameter dtype (None: as the policy's params)
    ref_offload: bool = False  # keep the reference parameters in host memory between uses
    decode_layout: Literal["sample", "train"] = "sample"  # GRPO rollout weights on an FSDP mesh: "sample" re-lays
    # out a compute-dtype copy without FSDP (no all-gather per token; the
    # whole model on every chip beside the train state), "train" decodes in
    # the train layout (no copy; weights gathered layer by layer each token)

    def __post_init__(self):
        for name, allowed in (
            ("remat", REMAT_CHOICES),
            ("vision_remat", REMAT_CHOICES),
            ("attention", ATTENTION_CHOICES),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"memory.{name}={getattr(self, name)!r}; expected one of {allowed}")
        for name in ("kv_cache_dtype", "ref_dtype"):
            if getattr(self, name) not in (None,) + DTYPES:
                raise ValueError(f"memory.{name}={getattr(self, name)!r}; expected None or one of {DTYPES}")
        if self.attention_block < 1 or self.loss_chunk < 0:
            raise ValueError(
                f"memory.attention_block={self.attention_block} must be >= 1 and "
                f"memory.loss_chunk={self.loss_chunk} >= 0"
            )

    def model_overrides(self) -> dict:
        """The ModelConfig fields these settings set: `model_cfg.replace(**memory.model_overrides())`."""
        return dict(
            remat=self.remat,
            vision_remat=self.vision_remat,
            attention=self.attention,
            attention_block=self.attention_block,
        )


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    name: str = "tiny"
    seed: int = 0
    model: str = "tiny"  # a dmx_jax.model preset name
    hf_checkpoint: str | None = None  # start from a Hugging Face Qwen2.5-VL folder instead
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # compute dtype; params stay float32
    mesh: MeshConfig = MeshConfig()
    memory: MemoryConfig = MemoryConfig()
    data: DataConfig = DataConfig()
    align: AlignConfig = AlignConfig()
    sft: StageConfig = StageConfig()
    cold_start: StageConfig = StageConfig(steps=60)
    teacher: TeacherConfig = TeacherConfig()
    rl: RLConfig = RLConfig()
    eval: EvalConfig = EvalConfig()
    lora: LoraConfig = LoraConfig()  # rank > 0: every stage trains decoder adapters only (dmx_jax.model.lora)
    export_hf: bool = True
    compile_cache: bool = True  # persistent XLA cache in <run dir>/xla_cache: a restart loads its programs


def tiny() -> ExperimentConfig:
    """The CPU default: a from-scratch miniature (the `small` preset, a SentencePiece tokenizer trained on the
    benchmark, an alignment stage for its tower) on the synthetic benchmark, minutes on 2 cores. It answers from
    the question, not the image (RESULTS.md, "From-scratch miniature"); `tiny_base` starts from a pretrained base.

    A run from a checkpoint on the same benchmark: --set hf_checkpoint=DIR --set align.steps=0 (DIR holds
    config.json, safetensors and tokenizer.json; the benchmark is encoded with that tokenizer and the checkpoint
    is scored zero-shot as the `base` row)."""
    return ExperimentConfig(
        model="small",
        data=DataConfig(on_too_long="skip"),
        align=AlignConfig(steps=300),
        sft=StageConfig(
            steps=500, save_every=250, optim=OptimConfig(learning_rate=1e-3, warmup_steps=20, total_steps=500)
        ),
        cold_start=StageConfig(
            steps=300,
            save_every=150,
            pad_multiple=64,  # rows: mean 217 of 448 tokens
            optim=OptimConfig(learning_rate=1e-3, warmup_steps=10, total_steps=300),
        ),
        eval=EvalConfig(examples=600, reasoning_max_new_tokens=192),
        rl=RLConfig(
            steps=24,
            save_every=12,
            algo=GRPOConfig(max_new_tokens=192),
            optim=OptimConfig(learning_rate=3e-5, warmup_steps=0, schedule="constant"),
        ),
    )


MINIATURE_BASE = str(Path(__file__).resolve().parent.parent / "models" / "miniature_base")


def tiny_base() -> ExperimentConfig:
    """The paper's three stages on top of the shipped miniature base (`models/miniature_base`, made by
    `python -m experiments.pretrain`), loaded through `hf_checkpoint` as a user loads Qwen2.5-VL-7B-Instruct
    (its tokenizer.json encodes the benchmark; it is scored zero-shot as the `base` row), on the synthetic
    benchmark. Images at the base's max_pixels (128 px studies resized to 140 px: 25 image tokens). The vision
    tower + merger stay frozen in every stage (fine-tuning them overwrote the base's reading), reasoning
    prompts put the instruction before the question (the base never saw a 107-token gap between question and
    answer), and cold-start traces give each grounding box right after its phrase and name a VQA question's
    finding first, with the trace's boxes moved a few pixels so its answer must copy them. Stage settings chosen
    from the runs in RESULTS.md ("Default run from the miniature base")."""
    return ExperimentConfig(
        name="tiny_base",
        model="base",
        hf_checkpoint=MINIATURE_BASE,
        data=DataConfig(
            on_too_long="skip",
            max_pixels=168 * 168,
            grounding_trace="box_first",
            vqa_trace="question_first",
            trace_box_jitter=3,
            reasoning_instruction="before_question",
        ),
        sft=StageConfig(
            steps=300,
            save_every=150,
            vision_lr=0.0,
            optim=OptimConfig(learning_rate=5e-4, warmup_steps=20, total_steps=300),
        ),
        cold_start=StageConfig(
            steps=600,
            save_every=300,
            pad_multiple=64,
            vision_lr=0.0,
            optim=OptimConfig(learning_rate=5e-4, warmup_steps=10, total_steps=600),
        ),
        eval=EvalConfig(examples=600, reasoning_max_new_tokens=192),
        rl=RLConfig(
            steps=24,
            save_every=12,
            algo=GRPOConfig(max_new_tokens=192),
            vision_lr=0.0,
            eval_every=12,
            optim=OptimConfig(learning_rate=3e-5, warmup_steps=0, schedule="constant"),
        ),
    )


def _scaled_data(**kw) -> DataConfig:
    """Real-data budgets derived from max_pixels: a 3056x2544 CXR at 262,144 pixels is 560x448 = 320 image
    tokens; the static patch budget (experiments.datasets.patch_budget: any aspect ratio) is 1,444 patches =
    361 tokens. Prompt text and chat template ~100 tokens, the reasoning suffix ~120, a report answer ~300,
    a <think> trace + boxed answer up to the GRPO max_new_tokens."""
    return DataConfig(
        source="mimic_cxr",
        image_size=512,
        max_pixels=262144,
        train_examples=351_500,
        eval_examples=1000,
        num_workers=8,
        prompt_len=512,  # 361 + ~100 prompt text, rounded up
        reasoning_prompt_len=640,  # + the reasoning suffix
        max_seq_len=1024,  # plain rows: prompt + report answer
        reasoning_seq_len=1536,  # prompt + <think> trace + answer
        **kw,
    )


def _scaled_memory(**kw) -> MemoryConfig:
    """Chosen from `python -m experiments.aot` (BUILD_NOTES.md AOT table). Attention is the pure-JAX blockwise
    kernel (any backend); the Pallas splash kernel is opt-in (`memory.attention=splash`, TPU only)."""
    return MemoryConfig(
        **{
            **dict(
                remat="full",
                vision_remat="full",
                attention="chunked",
                attention_block=512,
                loss_chunk=256,
                kv_cache_dtype="bfloat16",
                ref_dtype="bfloat16",
                decode_layout="train",
            ),
            **kw,
        }
    )


def qwen2_5_vl_3b(accum: tuple[int, int, int] = (8, 8, 40), ref_offload: bool = True) -> ExperimentConfig:
    """accum: gradient accumulation of SFT, cold start and the GRPO update (global batches stay 128, 64 and
    64 x 5): 3B micro-batches of 16, 8 and 8 rows, one or two rows per chip on a v5e-8, where the GRPO update
    needs the reference parameters in host memory (ref_offload) for 10% headroom."""
    sft_acc, cold_acc, rl_acc = accum
    return ExperimentConfig(
        name="qwen2_5_vl_3b",
        model="qwen2_5_vl_3b",
        dtype="bfloat16",
        mesh=MeshConfig(data=1, fsdp=-1, tensor=1),
        memory=_scaled_memory(ref_offload=ref_offload),
        data=_scaled_data(),
        sft=StageConfig(
            steps=10_000,
            batch_size=128,
            optim=OptimConfig(
                learning_rate=1e-5, warmup_steps=200, total_steps=10_000, weight_decay=0.01, grad_accum=sft_acc
            ),
        ),
        cold_start=StageConfig(
            steps=300,
            batch_size=64,
            optim=OptimConfig(learning_rate=1e-5, warmup_steps=20, total_steps=300, grad_accum=cold_acc),
        ),
        rl=RLConfig(
            steps=500,
            prompts_per_step=64,
            algo=GRPOConfig(group_size=5, max_new_tokens=1024, logprob_micro_batches=8, length_buckets=4),
            reward_bytes_per_token=16,
            reward_answer_bytes=2048,
            optim=OptimConfig(
                learning_rate=1e-6, warmup_steps=0, schedule="constant", weight_decay=0.01, grad_accum=rl_acc
            ),
        ),
        eval=EvalConfig(examples=2000, max_new_tokens=1024),
    )


def qwen2_5_vl_7b() -> ExperimentConfig:
    """Micro-batches of 32, 16 and 16 rows (accumulation 4, 4, 20), the reference in host memory between uses:
    v6e-8 (32 GiB) and v5p-8 (96 GiB) both fit (the GRPO update on v6e-8 needs 29.4 GiB with it resident)."""
    base = qwen2_5_vl_3b(accum=(4, 4, 20), ref_offload=True)
    return dataclasses.replace(
        base, name="qwen2_5_vl_7b", model="qwen2_5_vl_7b", mesh=MeshConfig(data=1, fsdp=-1, tensor=1)
    )


def qwen2_5_vl_7b_lora() -> ExperimentConfig:
    """The 7B preset with LoRA adapters (rank 16, alpha 32, the seven decoder projections) for a 4-chip slice or
    one GPU: the base frozen in bf16 with no optimizer state, the GRPO reference the shared base with a copy of
    the starting adapters (no base copy), decoding in the train layout in two sequential halves (the KV cache of
    all 320 rollouts at once outgrows a 16 GiB v5e chip); the 7B preset's batches and accumulation. Check the
    slice first:
    `python -m experiments.aot --config qwen2_5_vl_7b_lora --topology v5e-4,v6e-4`."""
    base = qwen2_5_vl_7b()
    rl = dataclasses.replace(base.rl, algo=dataclasses.replace(base.rl.algo, rollout_micro_batches=2))
    return dataclasses.replace(
        base,
        name="qwen2_5_vl_7b_lora",
        lora=LoraConfig(rank=16, alpha=32.0),
        rl=rl,
        memory=dataclasses.replace(base.memory, ref_offload=False),
    )


PRESETS = {
    "tiny": tiny,
    "tiny_base": tiny_base,
    "qwen2_5_vl_3b": qwen2_5_vl_3b,
    "qwen2_5_vl_7b": qwen2_5_vl_7b,
    "qwen2_5_vl_7b_lora": qwen2_5_vl_7b_lora,
}
