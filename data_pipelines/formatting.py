"""Render an Example as Qwen2.5-VL chat tokens with a loss mask over the assistant's answer only.

Template (the Qwen2.5-VL chat template, images first in the user turn):
  <|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n
  <|im_start|>user\\n(<|vision_start|><|image_pad|>*n<|vision_end|>)*{prompt}[\\n{reasoning suffix}]<|im_end|>\\n
  <|im_start|>assistant\\n{answer}<|im_end|>\\n
Every box written as [x1, y1, x2, y2] in the prompt or the answer is rescaled from the stored image's
pixels to the pixels of the resized image the model sees (paper convention: absolute resized-pixel
coordinates).
"""

from __future__ import annotations

import re
from importlib import resources

import numpy as np

from data_pipelines.schema import Example
from dmx_jax.rewards.paper import last_boxed

SYSTEM_PROMPT = "You are a helpful assistant."
_BOX = re.compile(r"\[(-?\d+(?:\.\d+)?), (-?\d+(?:\.\d+)?), (-?\d+(?:\.\d+)?), (-?\d+(?:\.\d+)?)\]")


def reasoning_suffix() -> str:
    return resources.files("data_pipelines").joinpath("templates/reasoning_suffix.txt").read_text().strip()


def format_box(box) -> str:
    x1, y1, x2, y2 = (int(round(float(v))) for v in box)
    return f"[{x1}, {y1}, {x2}, {y2}]"


def scale_box(box, size: tuple[int, int], resized: tuple[int, int]) -> tuple[float, float, float, float]:
    """Pixel xyxy in an image of size (w, h) -> the same box in the image resized to (w', h')."""
    sx, sy = resized[0] / size[0], resized[1] / size[1]
    x1, y1, x2, y2 = (float(v) for v in box)
    return (x1 * sx, y1 * sy, x2 * sx, y2 * sy)


def rescale_box_text(text: str, size: tuple[int, int], resized: tuple[int, int]) -> str:
    if tuple(size) == tuple(resized):
        return text
    return _BOX.sub(lambda m: format_box(scale_box([float(g) for g in m.groups()], size, resized)), text)


def parse_answer(text: str) -> str:
    """The content of the last \\boxed{...} (nested braces allowed); else the text after </think>; else all."""
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed.strip()
    if "</think>" in text:
        return text.split("</think>")[-1].strip()
    return text.strip()


def answer_text(example: Example, reasoning: bool) -> str:
    """The training target: the reasoning trace (cold start / RL format) or the plain target."""
    if reasoning:
        trace = example.meta.get("reasoning")
        if trace:
            return trace
        return f"<think></think>\nThe answer is: \\boxed{{{example.target}}}"
    return example.target


def render(
    example: Example,
    tokenizer,
    image_tokens: list[int],
    resized_sizes: list[tuple[int, int]] | None = None,
    *,
    reasoning: bool = False,
    with_answer: bool = True,
    reasoning_prompt: bool | None = None,
    instruction_first: bool = False,
) -> dict:
    """-> {'input_ids' int32 [L], 'loss_mask' int32 [L], 'prompt_len' int, 'answer' str}.

    image_tokens: tokens per image (t*h*w/merge^2). resized_sizes: (w, h) the model sees per image, for
    rescaling boxes (default: as stored). with_answer=False renders the prompt and the assistant header
    only (generation prompt). instruction_first: the reasoning instruction goes before the question, so the
    question sits next to the answer (the paper appends it after the question).
    """
    if len(image_tokens) != len(example.images):
        raise ValueError(
            f"example {example.example_id}: {len(example.images)} images but {len(image_tokens)} token counts"
        )
    size = example.image_sizes[example.box_image_index] if example.image_sizes else None
    resized = (resized_sizes or list(example.image_sizes))[example.box_image_index] if example.image_sizes else None
    fix = (lambda s: rescale_box_text(s, size, resized)) if size and resized else (lambda s: s)
    prompt = fix(example.prompt)
    if reasoning if reasoning_prompt is None else reasoning_prompt:
        prompt = f"{reasoning_suffix()}\n{prompt}" if instruction_first else f"{prompt}\n{reasoning_suffix()}"
    enc = tokenizer.encode
    ids: list[int] = [tokenizer.im_start_id] + enc(f"system\n{SYSTEM_PROMPT}") + [tokenizer.im_end_id] + enc("\n")
    ids += [tokenizer.im_start_id] + enc("user\n")
    for n in image_tokens:
        ids += [tokenizer.vision_start_id] + [tokenizer.image_pad_id] * int(n) + [tokenizer.vision_end_id]
    ids += enc(prompt) + [tokenizer.im_end_id] + enc("\n") + [tokenizer.im_start_id] + enc("assistant\n")
    prompt_len = len(ids)
    answer = fix(answer_text(example, reasoning))
    mask = [0] * prompt_len
    if with_answer:
        ans = enc(answer) + [tokenizer.im_end_id]
        ids += ans + enc("\n")
        mask += [1] * len(ans) + [0] * (len(ids) - prompt_len - len(ans))
    return {
        "input_ids": np.asarray(ids, np.int32),
        "loss_mask": np.asarray(mask, np.int32),
        "prompt_len": prompt_len,
        "answer": answer,
    }
