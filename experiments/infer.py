"""python -m experiments.infer --checkpoint DIR --image X.png [--image ...] (--question "..." | --task findings)

Loads a checkpoint (a Hugging Face Qwen2.5-VL folder, e.g. a run's `hf_export/`, or a finished stage of a run
directory such as `runs/tiny/grpo`), reads PNG/JPEG/DICOM images, answers greedily (with the paper's <think>
suffix when --reasoning), prints the reasoning and the answer, and writes a PNG with the cited boxes drawn.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from flax import nnx

from data_pipelines.formatting import parse_answer
from data_pipelines.image_io import load_image
from data_pipelines.pipeline import EncodingConfig, prompt_batch
from data_pipelines.tokenizer import HFTokenizer, SentencePieceTokenizer
from dmx_jax.hf import load_pretrained, read_config
from dmx_jax.model import Qwen25VL
from dmx_jax.sharding import MeshConfig, make_mesh
from experiments.configs import PRESETS
from experiments.evaluate import Placement, boxes_in, generate_texts, printable
from experiments.overrides import config_from_dict
from experiments.pipeline import model_config_for
from experiments.stages import load_stage_params

TASK_PROMPTS = {
    "findings": "Generate the FINDINGS section of the radiology report for this chest X-ray.",
    "impression": "Generate the IMPRESSION section of the radiology report for this chest X-ray.",
    "classification": "Which findings are present in this chest X-ray? List them separated by '|'.",
}
SP_MODEL = "dmx_tokenizer.model"  # SentencePiece model shipped next to a tiny run's HF export


class InferenceError(ValueError):
    """A one-line, user-facing problem with the inputs (missing file, bad checkpoint, no image...)."""


def load_tokenizer(folder: Path):
    if (folder / "tokenizer.json").is_file():
        return HFTokenizer.from_file(folder / "tokenizer.json")
    if (folder / SP_MODEL).is_file():
        return SentencePieceTokenizer((folder / SP_MODEL).read_bytes())
    raise InferenceError(
        f"{folder}: no tokenizer.json (Qwen2.5-VL) or {SP_MODEL} (dmx-jax tiny run) found; pass --tokenizer"
    )


def load_checkpoint(path: Path, tokenizer_path: Path | None = None):
    """-> (graphdef, params, model config, tokenizer) from an HF folder or a finished run stage."""
    if not path.exists():
        raise InferenceError(f"checkpoint {path} does not exist")
    if (path / "final_params").is_dir():  # a finished stage of a run directory
        return _load_stage(path, tokenizer_path)
    if (path / "hf_export").is_dir():  # a run directory: use its final export
        path = path / "hf_export"
    if not (path / "config.json").is_file():
        raise InferenceError(
            f"{path}: neither a Hugging Face folder (config.json + *.safetensors) nor a finished "
            f"stage of a run directory (final_params/)"
        )
    tok = load_tokenizer(tokenizer_path or path)
    model, mcfg = load_pretrained(path)
    graphdef, state = nnx.split(model)
    return graphdef, nnx.to_pure_dict(state), mcfg, tok


def _load_stage(stage_dir: Path, tokenizer_path: Path | None):
    run_dir = stage_dir.parent
    cfg = config_from_dict(PRESETS["tiny"](), json.loads((run_dir / "config.json").read_text()))
    tok_files = sorted((run_dir / "tokenizer").glob("*.model")) if tokenizer_path is None else []
    if cfg.hf_checkpoint:  # a run from a checkpoint: its config and tokenizer.json
        given = Path(cfg.data.tokenizer).parent if cfg.data.tokenizer else Path(cfg.hf_checkpoint)
        tok, mcfg = load_tokenizer(tokenizer_path or given), read_config(cfg.hf_checkpoint)
    else:
        if tokenizer_path is not None:
            tok = load_tokenizer(tokenizer_path)
        elif tok_files:
            tok = SentencePieceTokenizer(tok_files[-1].read_bytes())
        else:
            raise InferenceError(f"{run_dir}/tokenizer has no SentencePiece model; pass --tokenizer")
        mcfg = model_config_for(cfg, tok)
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Qwen25VL(mcfg, nnx.Rngs(0))))
    like = nnx.to_pure_dict(state)
    try:
        params = load_stage_params(stage_dir, like, make_mesh(MeshConfig(1, 1, 1)))
    except (ValueError, KeyError) as e:
        raise InferenceError(
            f"{stage_dir}/final_params does not match the model of {run_dir}/config.json: {str(e).splitlines()[0]}"
        ) from None
    return graphdef, params, mcfg, tok


def answer(
    graphdef,
    params,
    mcfg,
    tok,
    images: list[np.ndarray],
    prompt: str,
    *,
    task: str,
    reasoning: bool,
    max_new_tokens: int,
    max_pixels: int,
    min_pixels: int,
    instruction_first: bool = False,
) -> dict:
    enc = EncodingConfig(
        vision=mcfg.vision,
        min_pixels=min_pixels,
        max_pixels=max_pixels,
        reasoning=reasoning,
        instruction_first=instruction_first,
    )
    arrays, meta = prompt_batch(images, prompt, tok, enc, task=task)
    text = generate_texts(graphdef, params, arrays, tok, max_new_tokens=max_new_tokens, placement=Placement(1))[0]
    return {"output": text, "answer": parse_answer(text), "model_size": tuple(meta["image_size"])}


def draw_boxes(image: np.ndarray, model_size: tuple[int, int], text: str, out: Path, title: str) -> int:
    """Boxes cited in `text` (model-input pixels) drawn on `image` (stored pixels); returns how many."""
    import matplotlib  # noqa: PLC0415 heavy

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 heavy
    from matplotlib.patches import Rectangle  # noqa: PLC0415 heavy

    mw, mh = model_size
    fig, ax = plt.subplots(figsize=(5, 5.6))
    ax.imshow(np.clip(image, 0, 1), cmap="gray", extent=(0, mw, mh, 0))
    boxes = boxes_in(text)
    for k, b in enumerate(boxes):
        ax.add_patch(Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], fill=False, ec="red", lw=1.5))
        ax.text(b[0] + 2, b[1] + 8, str(k + 1), color="red", fontsize=9)
    ax.set_xlim(0, mw), ax.set_ylim(mh, 0), ax.axis("off")
    ax.set_title(printable(title), fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return len(boxes)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m experiments.infer", description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True, help="HF Qwen2.5-VL folder, run directory, or run stage directory")
    ap.add_argument("--image", action="append", default=[], help="PNG/JPEG/DICOM; repeat for prior + current")
    ap.add_argument("--question", help="free-text question (VQA / grounding)")
    ap.add_argument("--task", choices=sorted(TASK_PROMPTS), help="use the standard prompt of a task instead")
    ap.add_argument("--reasoning", action="store_true", help="append the paper's <think> ... \\boxed{} suffix")
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--max-pixels", type=int, default=None, help="default: 262144, or the run's data.max_pixels")
    ap.add_argument("--min-pixels", type=int, default=56 * 56)
    ap.add_argument("--tokenizer", type=Path, default=None, help="folder with tokenizer.json or dmx_tokenizer.model")
    ap.add_argument("--out", type=Path, default=Path("prediction.png"))
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if not args.image:
            raise InferenceError("no --image given: every question needs at least one chest X-ray")
        if bool(args.question) == bool(args.task):
            raise InferenceError("give exactly one of --question or --task")

        images = [load_image(p) for p in args.image]
        ckpt = Path(args.checkpoint)
        graphdef, params, mcfg, tok = load_checkpoint(ckpt, args.tokenizer)
        run_data = _run_data(ckpt)
        max_pixels = args.max_pixels or run_data.get("max_pixels") or 262144
        prompt = args.question or TASK_PROMPTS[args.task]
        task = args.task or "vqa"
        res = answer(
            graphdef,
            params,
            mcfg,
            tok,
            images,
            prompt,
            task=task,
            reasoning=args.reasoning,
            max_new_tokens=args.max_new_tokens,
            max_pixels=max_pixels,
            min_pixels=args.min_pixels,
            instruction_first=run_data.get("reasoning_instruction") == "before_question",
        )
    except (InferenceError, ValueError, OSError) as e:  # ImageReadError and CheckpointError are ValueErrors
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    n = draw_boxes(images[-1], res["model_size"], res["output"], args.out, f"Q: {prompt[:70]}\nA: {res['answer'][:70]}")
    print(res["output"])
    print(f"\nanswer: {res['answer']}\nboxes drawn: {n} -> {args.out}")
    return 0


def _run_data(ckpt: Path) -> dict:
    """The `data` section of the run that wrote `ckpt` (a run directory or one of its stages), so prompts are
    rendered as it trained (max_pixels, where the reasoning instruction goes); {} for a Hugging Face folder."""
    for cand in (ckpt / "config.json", ckpt.parent / "config.json"):
        if cand.is_file():
            data = json.loads(cand.read_text()).get("data")
            if isinstance(data, dict):
                return data
    return {}


if __name__ == "__main__":
    sys.exit(main())
