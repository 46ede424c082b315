"""Qwen2.5-VL configuration: frozen dataclasses, presets, and conversion from/to transformers config.json."""

from __future__ import annotations

import dataclasses
from typing import Any

from dmx_jax.model.lora import LoraConfig

DTYPES = ("float32", "bfloat16", "float16")
REMAT_CHOICES = ("none", "dots", "full", "offload")
ATTENTION_CHOICES = ("xla", "chunked", "cudnn", "splash")


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    depth: int = 32
    hidden_size: int = 1280
    intermediate_size: int = 3420
    num_heads: int = 16
    in_channels: int = 3
    patch_size: int = 14
    spatial_merge_size: int = 2
    temporal_patch_size: int = 2
    window_size: int = 112
    fullatt_block_indexes: tuple[int, ...] = (7, 15, 23, 31)
    out_hidden_size: int = 3584
    hidden_act: str = "silu"
    rope_theta: float = 10000.0
    tokens_per_second: int = 2

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def patch_dim(self) -> int:
        return self.in_channels * self.temporal_patch_size * self.patch_size**2


@dataclasses.dataclass(frozen=True)
class TextConfig:
    vocab_size: int = 152064
    hidden_size: int = 3584
    intermediate_size: int = 18944
    num_hidden_layers: int = 28
    num_attention_heads: int = 28
    num_key_value_heads: int = 4
    hidden_act: str = "silu"
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1e6
    mrope_section: tuple[int, ...] = (16, 24, 24)
    max_position_embeddings: int = 128000
    lora: LoraConfig = LoraConfig()  # adapters on the decoder's projections (rank 0: none); not an HF field

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    text: TextConfig = TextConfig()
    vision: VisionConfig = VisionConfig()
    image_token_id: int = 151655
    video_token_id: int = 151656
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653
    bos_token_id: int = 151643
    eos_token_id: int = 151645
    pad_token_id: int = 151643
    tie_word_embeddings: bool = False
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"
    remat: str = "none"  # text tower: "none" | "dots" | "full" | "offload" (saved dots in host memory)
    vision_remat: str = "none"  # vision tower, same choices
    attention: str = "xla"  # "xla" (dense) | "chunked" (online softmax) | "cudnn" (GPU) | "splash" (TPU)
    attention_block: int = 512  # key block of "chunked" / "splash"

    def __post_init__(self):
        if sum(self.text.mrope_section) * 2 != self.text.head_dim:
            raise ValueError(
                f"mrope_section {self.text.mrope_section} must sum to head_dim/2 = {self.text.head_dim // 2}"
            )
        if self.vision.out_hidden_size != self.text.hidden_size:
            raise ValueError(
                f"vision.out_hidden_size {self.vision.out_hidden_size} != text.hidden_size {self.text.hidden_size}"
            )
        for name in ("remat", "vision_remat"):
            if getattr(self, name) not in REMAT_CHOICES:
                raise ValueError(f"ModelConfig.{name}={getattr(self, name)!r}; expected one of {REMAT_CHOICES}")
        if self.attention not in ATTENTION_CHOICES:
            raise ValueError(f"ModelConfig.attention={self.attention!r}; expected one of {ATTENTION_CHOICES}")
        if self.attention_block < 1:
            raise ValueError(f"ModelConfig.attention_block={self.attention_block} must be >= 1")
        if self.attention == "splash" and self.attention_block % 128:
            raise ValueError(
                f"attention='splash' needs attention_block as a multiple of 128, got {self.attention_block}"
            )
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in DTYPES:
                raise ValueError(f"ModelConfig.{name}={getattr(self, name)!r}; expected one of {DTYPES}")
        t, v = self.text, self.vision
        if t.hidden_size % t.num_attention_heads or t.num_attention_heads % t.num_key_value_heads:
            raise ValueError(
                f"text: hidden_size {t.hidden_size}, heads {t.num_attention_heads} and kv heads "
                f"{t.num_key_value_heads} do not divide"
            )
        if len(t.mrope_section) < 3 or min(t.mrope_section) < 0:
            raise ValueError(
                f"mrope_section {t.mrope_section} needs >= 3 non-negative entries: consecutive "
                f"frequency bands for t, h, w, cycling (transformers' i % 3)"
            )
        if v.hidden_size % v.num_heads or v.head_dim % 4:
            raise ValueError(
                f"vision: hidden_size {v.hidden_size} / num_heads {v.num_heads} must give a head_dim "
                f"divisible by 4 (2-D rotary)"
            )
        if v.window_size // v.spatial_merge_size // v.patch_size < 1:
            raise ValueError(f"vision.window_size {v.window_size} is smaller than one merged patch")
        for name in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"):
            if not 0 <= getattr(self, name) < t.vocab_size:
                raise ValueError(f"{name}={getattr(self, name)} is outside the vocabulary (size {t.vocab_size})")

    def replace(self, **kw) -> ModelConfig:
        return dataclasses.replace(self, **kw)

    @classmethod
    def from_hf_config(cls, hf: dict[str, Any], source: str = "config.json") -> ModelConfig:
        """From a transformers config dict (transformers-5 nested or older flat layout)."""
        return from_hf_config(hf, source)

    def to_hf_config(self) -> dict[str, Any]:
        """A transformers-5 config.json dict."""
        return to_hf_config(self)


def tiny() -> ModelConfig:
    """A CPU-sized model with the real architecture (2+2 layers, several vision windows)."""
    return ModelConfig(
        text=TextConfig(
            vocab_size=1024,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            mrope_section=(2, 3, 3),
            max_position_embeddings=4096,
        ),
        vision=VisionConfig(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            window_size=56,
            fullatt_block_indexes=(1,),
            out_hidden_size=64,
        ),
        image_token_id=1021,
        video_token_id=1022,
        vision_start_token_id=1019,
        vision_end_token_id=1020,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )


def small() -> ModelConfig:
    """The CPU experiment size (`python -m experiments.run` default): 4+4 layers, ~2M parameters.

    rope_theta 3 (not Qwen's 1e6): with head_dim 32 the w-axis M-RoPE bands (the lowest frequencies) turn
    1e6^(-20/32) = 1.8e-4 rad per image column at 1e6, so the decoder cannot tell image columns apart; at 3
    they turn 0.50-0.36 rad. Measured with tests/test_image_canary.py (which side holds the blob, lr 1e-3):
    1e6, 100 and 30 stay at chance for 300-400 steps, 10 solves it at ~300 steps, 3 at ~100."""
    return ModelConfig(
        text=TextConfig(
            vocab_size=2048,
            hidden_size=128,
            intermediate_size=384,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            rope_theta=3.0,
            mrope_section=(4, 6, 6),
            max_position_embeddings=4096,
        ),
        vision=VisionConfig(
            depth=4,
            hidden_size=64,
            intermediate_size=192,
            num_heads=2,
            window_size=56,
            fullatt_block_indexes=(1, 3),
            out_hidden_size=128,
        ),
        image_token_id=2045,
        video_token_id=2046,
        vision_start_token_id=2043,
        vision_end_token_id=2044,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )


def base() -> ModelConfig:
    """The miniature base (`python -m experiments.pretrain`): 6+4 layers, 5.3M parameters, a 128-wide tower over
    14 px patches and a 256-wide decoder with head_dim 64 and Qwen-style rope (theta 10,000), so its
    low-frequency bands leave content lookups from the answer back to the image unrotated. Vocabulary and
    special ids are the recipe's tokenizer's (`experiments.pretrain` sets them from it)."""
    return ModelConfig(
        text=TextConfig(
            vocab_size=2048,
            hidden_size=256,
            intermediate_size=768,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            rope_theta=10000.0,
            mrope_section=(8, 12, 12),
            max_position_embeddings=4096,
        ),
        vision=VisionConfig(
            depth=6,
            hidden_size=128,
            intermediate_size=384,
            num_heads=4,
            window_size=56,
            fullatt_block_indexes=(2, 5),
            out_hidden_size=256,
        ),
        image_token_id=5,
        video_token_id=6,
        vision_start_token_id=3,
        vision_end_token_id=4,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=True,
    )


def qwen2_5_vl_7b() -> ModelConfig:
    return ModelConfig()


def qwen2_5_vl_3b() -> ModelConfig:
    return ModelConfig(
        text=TextConfig(
            vocab_size=151936,
            hidden_size=2048,
            intermediate_size=11008,
            num_hidden_layers=36,
            num_attention_heads=16,
            num_key_value_heads=2,
        ),
        vision=VisionConfig(out_hidden_size=2048),
        tie_word_embeddings=True,
    )


PRESETS = {"tiny": tiny, "small": small, "base": base, "qwen2_5_vl_3b": qwen2_5_vl_3b, "qwen2_5_vl_7b": qwen2_5_vl_7b}


def _rope(d: dict, key_theta: str = "rope_theta") -> tuple[float | None, dict]:
    params = d.get("rope_parameters") or d.get("rope_scaling") or {}
    theta = params.get("rope_theta", d.get(key_theta))
    return theta, params


def from_hf_config(hf: dict[str, Any], source: str = "config.json") -> ModelConfig:
    """ModelConfig from a transformers Qwen2.5-VL config dict (transformers 5 or 4.x layouts)."""
    mt = hf.get("model_type")
    if mt != "qwen2_5_vl":
        raise ValueError(
            f"{source}: model_type is {mt!r}, expected 'qwen2_5_vl' (only Qwen2.5-VL checkpoints are supported)"
        )
    tc = dict(hf.get("text_config") or {})
    for k, v in hf.items():  # older layouts keep text fields at the top level
        if k not in ("text_config", "vision_config") and k not in tc:
            tc[k] = v
    vc = hf.get("vision_config") or {}
    theta, rp = _rope(tc)
    section = rp.get("mrope_section")
    if section is None:
        raise ValueError(f"{source}: no mrope_section in rope_parameters/rope_scaling")
    if tc.get("use_sliding_window"):
        raise ValueError(f"{source}: use_sliding_window=true is not supported")
    if rp.get("rope_type", rp.get("type", "default")) not in ("default", "mrope"):
        raise ValueError(f"{source}: rope_type {rp.get('rope_type')!r} is not supported")
    try:
        text = TextConfig(
            vocab_size=tc["vocab_size"],
            hidden_size=tc["hidden_size"],
            intermediate_size=tc["intermediate_size"],
            num_hidden_layers=tc["num_hidden_layers"],
            num_attention_heads=tc["num_attention_heads"],
            num_key_value_heads=tc.get("num_key_value_heads", tc["num_attention_heads"]),
            hidden_act=tc.get("hidden_act", "silu"),
            rms_norm_eps=tc.get("rms_norm_eps", 1e-6),
            rope_theta=float(theta if theta is not None else 1e6),
            mrope_section=tuple(section),
            max_position_embeddings=tc.get("max_position_embeddings", 128000),
        )
        vtheta, _ = _rope(vc)
        vision = VisionConfig(
            depth=vc["depth"],
            hidden_size=vc["hidden_size"],
            intermediate_size=vc["intermediate_size"],
            num_heads=vc["num_heads"],
            in_channels=vc.get("in_channels", 3),
            patch_size=vc.get("patch_size", 14),
            spatial_merge_size=vc.get("spatial_merge_size", 2),
            temporal_patch_size=vc.get("temporal_patch_size", 2),
            window_size=vc.get("window_size", 112),
            fullatt_block_indexes=tuple(vc.get("fullatt_block_indexes", (7, 15, 23, 31))),
            out_hidden_size=vc.get("out_hidden_size", tc["hidden_size"]),
            hidden_act=vc.get("hidden_act", "silu"),
            rope_theta=float(vtheta if vtheta is not None else 10000.0),
            tokens_per_second=vc.get("tokens_per_second", 2),
        )
    except KeyError as e:
        raise ValueError(f"{source}: missing field {e.args[0]!r}") from None
    tie = hf.get("tie_word_embeddings", tc.get("tie_word_embeddings", False))
    ids = {
        k: hf.get(k, tc.get(k))
        for k in (
            "image_token_id",
            "video_token_id",
            "vision_start_token_id",
            "vision_end_token_id",
            "bos_token_id",
            "eos_token_id",
            "pad_token_id",
        )
    }
    defaults = ModelConfig()
    if isinstance(ids["eos_token_id"], list) and ids["eos_token_id"]:  # hub configs may list several
        ids["eos_token_id"] = ids["eos_token_id"][0]
    ids = {k: (v if isinstance(v, int) else getattr(defaults, k)) for k, v in ids.items()}
    return ModelConfig(text=text, vision=vision, tie_word_embeddings=bool(tie), **ids)


def to_hf_config(cfg: ModelConfig) -> dict[str, Any]:
    """A transformers-5 style config.json dict."""
    t, v = cfg.text, cfg.vision
    text = dict(
        model_type="qwen2_5_vl_text",
        vocab_size=t.vocab_size,
        hidden_size=t.hidden_size,
        intermediate_size=t.intermediate_size,
        num_hidden_layers=t.num_hidden_layers,
        num_attention_heads=t.num_attention_heads,
        num_key_value_heads=t.num_key_value_heads,
        hidden_act=t.hidden_act,
        rms_norm_eps=t.rms_norm_eps,
        max_position_embeddings=t.max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": t.rope_theta, "mrope_section": list(t.mrope_section)},
        bos_token_id=cfg.bos_token_id,
        eos_token_id=cfg.eos_token_id,
        pad_token_id=cfg.pad_token_id,
        tie_word_embeddings=cfg.tie_word_embeddings,
        use_cache=True,
        dtype=cfg.param_dtype,
    )
    vision = dict(
        model_type="qwen2_5_vl_vision",
        depth=v.depth,
        hidden_size=v.hidden_size,
        intermediate_size=v.intermediate_size,
        num_heads=v.num_heads,
        in_channels=v.in_channels,
        patch_size=v.patch_size,
        spatial_merge_size=v.spatial_merge_size,
        temporal_patch_size=v.temporal_patch_size,
        window_size=v.window_size,
        fullatt_block_indexes=list(v.fullatt_block_indexes),
        out_hidden_size=v.out_hidden_size,
        hidden_act=v.hidden_act,
        tokens_per_second=v.tokens_per_second,
        rope_parameters={"rope_type": "axial", "rope_theta": v.rope_theta},
        dtype=cfg.param_dtype,
    )
    return dict(
        architectures=["Qwen2_5_VLForConditionalGeneration"],
        model_type="qwen2_5_vl",
        text_config=text,
        vision_config=vision,
        image_token_id=cfg.image_token_id,
        video_token_id=cfg.video_token_id,
        vision_start_token_id=cfg.vision_start_token_id,
        vision_end_token_id=cfg.vision_end_token_id,
        tie_word_embeddings=cfg.tie_word_embeddings,
        dtype=cfg.param_dtype,
    )
