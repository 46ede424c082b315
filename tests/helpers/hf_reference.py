"""Tiny random transformers Qwen2.5-VL references (test-only: imports torch and transformers)."""

import numpy as np
import torch
from PIL import Image

IMAGE, VSTART, VEND = 997, 995, 996

CONFIGS = {
    # heads 4 / kv 2, mrope (2,3,3), window of 2x2 merged tokens, full attention in block 1, untied head
    "a": dict(
        text=dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            mrope_section=[2, 3, 3],
            tie=False,
        ),
        vision=dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            window_size=56,
            fullatt_block_indexes=[1],
            spatial_merge_size=2,
        ),
    ),
    # heads 2 / kv 1, mrope sections cycling t, h, w with empty ones (transformers takes section i from axis
    # i % 3; the `small` preset's layout), merge 3, window 2x2 merged (3x3-patch) tokens, full attention in
    # block 0, 3 blocks, tied
    "b": dict(
        text=dict(
            hidden_size=48,
            intermediate_size=96,
            num_hidden_layers=3,
            num_attention_heads=2,
            num_key_value_heads=1,
            mrope_section=[0, 2, 1, 0, 1, 2, 6],
            tie=True,
        ),
        vision=dict(
            depth=3,
            hidden_size=32,
            intermediate_size=48,
            num_heads=4,
            window_size=84,
            fullatt_block_indexes=[0],
            spatial_merge_size=3,
        ),
    ),
}


def make_reference(name: str, seed: int = 0):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration  # noqa: PLC0415 heavy

    spec = CONFIGS[name]
    t, v = spec["text"], spec["vision"]
    cfg = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=1000,
            hidden_size=t["hidden_size"],
            intermediate_size=t["intermediate_size"],
            num_hidden_layers=t["num_hidden_layers"],
            num_attention_heads=t["num_attention_heads"],
            num_key_value_heads=t["num_key_value_heads"],
            hidden_act="silu",
            rms_norm_eps=1e-6,
            max_position_embeddings=1024,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": t["mrope_section"]},
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
            tie_word_embeddings=t["tie"],
        ),
        vision_config=dict(
            depth=v["depth"],
            hidden_size=v["hidden_size"],
            intermediate_size=v["intermediate_size"],
            num_heads=v["num_heads"],
            in_channels=3,
            patch_size=14,
            spatial_merge_size=v["spatial_merge_size"],
            temporal_patch_size=2,
            window_size=v["window_size"],
            out_hidden_size=t["hidden_size"],
            fullatt_block_indexes=v["fullatt_block_indexes"],
            hidden_act="silu",
            tokens_per_second=2,
        ),
        image_token_id=IMAGE,
        video_token_id=998,
        vision_start_token_id=VSTART,
        vision_end_token_id=VEND,
        tie_word_embeddings=t["tie"],
    )
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(cfg).eval()
    with torch.no_grad():  # larger-than-default random weights so every path matters numerically
        for p in model.parameters():
            p.normal_(0.0, 0.08)
    return model


def processor(merge_size=2, min_pixels=56 * 56, max_pixels=28 * 28 * 1280):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil  # noqa: PLC0415 heavy

    return Qwen2VLImageProcessorPil(
        patch_size=14, temporal_patch_size=2, merge_size=merge_size, min_pixels=min_pixels, max_pixels=max_pixels
    )


def gray_image(h, w, seed):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8), "L")


def image_tokens(grid_thw, merge=2):
    return [int(np.prod(g)) // merge**2 for g in np.asarray(grid_thw)]


def prompt_ids(n_tokens_per_image, text_chunks):
    """text, [vision_start, image x n, vision_end, text] per image."""
    ids = list(text_chunks[0])
    for n, chunk in zip(n_tokens_per_image, text_chunks[1:]):
        ids += [VSTART] + [IMAGE] * n + [VEND] + list(chunk)
    return ids


def left_pad(rows, pad=0):
    T = max(len(r) for r in rows)
    ids = np.full((len(rows), T), pad, np.int64)
    mask = np.zeros((len(rows), T), np.int64)
    for i, r in enumerate(rows):
        ids[i, T - len(r) :] = r
        mask[i, T - len(r) :] = 1
    return ids, mask


def reference_logits(model, ids, mask, pixel_values=None, grid=None):
    with torch.no_grad():
        ids_t = torch.as_tensor(ids)
        out = model(
            input_ids=ids_t,
            attention_mask=torch.as_tensor(mask),
            pixel_values=None if pixel_values is None else torch.as_tensor(pixel_values),
            image_grid_thw=None if grid is None else torch.as_tensor(grid),
            mm_token_type_ids=(ids_t == IMAGE).int(),
        )
    return out.logits.float().numpy()
