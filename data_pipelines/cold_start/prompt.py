"""Teacher prompts: the template file, the per-example fields and the chat messages.

Coordinates shown to the teacher are absolute pixels of the resized model input (paper.md §2), i.e. the
frame the trained model will cite boxes in: boxes written in the question or answer are rescaled exactly
as data_pipelines.formatting renders them for the model, and the finding boxes are rescaled the same way
and clipped to the image.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import os
import string
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

from data_pipelines.boxes import qwen_input_size
from data_pipelines.formatting import format_box, rescale_box_text, scale_box
from data_pipelines.image_io import load_image
from data_pipelines.schema import Example

TEMPLATE_FILE = "templates/cold_start_teacher.txt"
USER_SPLIT = "---USER---"
FIELDS = ("task", "images_note", "width", "height", "question", "answer", "boxes")
Size = tuple[int, int]  # (width, height)
ResizeFn = Callable[[Size], Size]


@dataclasses.dataclass(frozen=True)
class TeacherTemplate:
    text: str  # the whole file, hashed into cache keys
    system: string.Template
    user: string.Template


def load_template(path: str | os.PathLike | None = None) -> TeacherTemplate:
    """The (system, user) template pair; default: the packaged cold_start_teacher.txt."""
    where = str(path) if path is not None else f"data_pipelines/{TEMPLATE_FILE}"
    source = Path(path) if path is not None else resources.files("data_pipelines").joinpath(TEMPLATE_FILE)
    text = source.read_text(encoding="utf-8")
    if USER_SPLIT not in text:
        raise ValueError(f"{where}: missing the {USER_SPLIT} line between the system and user parts")
    system, user = (part.strip() for part in text.split(USER_SPLIT, 1))
    unknown = {
        m.group("named") or m.group("braced")
        for m in string.Template.pattern.finditer(user + system)
        if m.group("named") or m.group("braced")
    } - set(FIELDS)
    if unknown:
        raise ValueError(f"{where}: unknown template fields {sorted(unknown)}; known: {list(FIELDS)}")
    return TeacherTemplate(text, string.Template(system), string.Template(user))


def box_frame(example: Example, resized_size_fn: ResizeFn | None = None) -> tuple[Size, Size]:
    """(stored size, resized size) of the image the example's boxes refer to (box_image_index)."""
    if not example.image_sizes:
        raise ValueError(f"example {example.example_id!r}: no images, a grounded trace needs one")
    size = tuple(int(v) for v in example.image_sizes[example.box_image_index])
    if min(size) <= 0:
        raise ValueError(f"example {example.example_id!r}: image size {size} unknown or invalid")
    resized = tuple(int(v) for v in (resized_size_fn or qwen_input_size)(size))
    return size, resized  # type: ignore[return-value]


def _clip(box, resized: Size) -> tuple[float, ...]:
    w, h = resized
    x1, y1, x2, y2 = box
    return (min(max(x1, 0), w), min(max(y1, 0), h), min(max(x2, 0), w), min(max(y2, 0), h))


def teacher_fields(example: Example, size: Size, resized: Size) -> dict[str, str]:
    """Template fields for one example, every coordinate in the resized frame."""
    lines = [
        f"- {b.label or 'finding'}: {format_box(_clip(scale_box(b.as_tuple(), size, resized), resized))}"
        for b in example.boxes
    ]
    n = len(example.images)
    k = example.box_image_index % n + 1
    note = (
        f"Images: {n}, the prior study first and the current study last; the size and every box refer to image {k}.\n"
        if n > 1
        else ""
    )
    return {
        "task": example.task,
        "images_note": note,
        "width": str(resized[0]),
        "height": str(resized[1]),
        "question": rescale_box_text(example.prompt, size, resized),
        "answer": rescale_box_text(example.target, size, resized),
        "boxes": "\n".join(lines) or "none annotated",
    }


def image_data_url(image, resized: Size) -> str:
    """A stored image (path or [H, W] array in [0, 1]) resized to (w, h), as a base64 PNG data URL."""
    array = load_image(image) if isinstance(image, (str, os.PathLike)) else np.asarray(image, np.float32)
    if array.ndim != 2:
        raise ValueError(f"image_data_url: expected a 2-D grey image, got shape {array.shape}")
    pixels = Image.fromarray(np.rint(np.clip(array, 0.0, 1.0) * 255.0).astype(np.uint8), mode="L")
    buffer = io.BytesIO()
    pixels.resize(resized, Image.Resampling.BICUBIC).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def messages(
    example: Example,
    template: TeacherTemplate,
    fields: dict[str, str],
    *,
    send_images: bool,
    resized_size_fn: ResizeFn | None = None,
) -> list[dict]:
    """OpenAI chat messages: system text, then the user turn (images first when sent, then the text)."""
    system = template.system.safe_substitute(fields)
    user_text = template.user.safe_substitute(fields)
    if not send_images:
        user: str | list[dict] = user_text
    else:
        fn = resized_size_fn or qwen_input_size
        user = [
            {"type": "image_url", "image_url": {"url": image_data_url(img, tuple(fn(tuple(s))))}}
            for img, s in zip(example.images, example.image_sizes)
        ]
        user.append({"type": "text", "text": user_text})
    out = [{"role": "system", "content": system}] if system else []
    return out + [{"role": "user", "content": user}]
