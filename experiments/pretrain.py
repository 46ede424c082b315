"""python -m experiments.pretrain [--set key=value ...] [--run-dir runs/pretrain] [--out base_model]

Pretrains the shipped miniature base: a Qwen2.5-VL-shaped model (`dmx_jax.model` preset `base`) trained from
scratch on the pretraining corpus (data_pipelines.synthetic.pretrain: studies of their own seed, tasks that
teach it to see), with a byte-level BPE tokenizer trained on that corpus. Every `probe_every` steps it scores
held-out pretraining-style prompts with real and with swapped images (presence accuracy, detection mIoU, per
finding) into DIR/probe.jsonl. Checkpoints every `save_every` steps; rerunning the same command resumes.
At the end it writes a Hugging Face folder (config.json, model.safetensors, tokenizer.json, README.md card)
to --out, which `dmx_jax.load_pretrained`, transformers and `experiments.run --set hf_checkpoint=` open.
The config and the row sources live in `experiments.pretrain_data`.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from data_pipelines.synthetic.pretrain import FOCUS_MIX, FOCUS_START, PROBE_START
from data_pipelines.tokenizer import HFTokenizer, train_byte_level_bpe
from dmx_jax.hf import save_pretrained
from dmx_jax.model import Qwen25VL
from dmx_jax.sharding import MeshConfig, make_mesh
from dmx_jax.training.align import AlignModel, align_metrics, merge_vision, stack_align_rows
from dmx_jax.training.loop import MetricsWriter
from dmx_jax.training.loss import shift_targets, token_losses
from dmx_jax.training.optim import make_optimizer
from experiments.evaluate import evaluate_stage, example_scores
from experiments.overrides import ConfigError, apply_overrides
from experiments.pretrain_data import (
    PretrainConfig,
    align_source,
    model_config,
    patch_budget,
    probe_groups,
    row_source,
    task_rows,
    tokenizer_corpus,
)
from experiments.stages import (
    RunContext,
    StageSpec,
    align_recipe,
    load_stage_params,
    run_stage,
    sft_recipe,
    stage_done,
    trimmed_stack,
)

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "models" / "miniature_base"


def probe(graphdef, params, groups, tok, task_batch: tuple[dict, np.ndarray] | None = None) -> dict:
    """Presence accuracy and detection mIoU, real and with images swapped, overall and per CheXpert finding;
    with task_batch (task_rows), the teacher-forced answer loss per task, real vs swapped ("task_loss")."""
    metrics, records = evaluate_stage(graphdef, params, groups, tok, n_bootstrap=200, control=True)
    real, swapped = example_scores(records), example_scores(records, "control_answer")
    control = metrics["image_control"]
    out: dict = {
        "presence_acc": metrics.get("vqa_score", {}).get("mean", np.nan),
        "detect_miou": metrics.get("grounding", {}).get("miou", {}).get("mean", np.nan),
        "presence_acc_swapped": control.get("vqa_score", {}).get("mean", np.nan),
        "detect_miou_swapped": control.get("grounding", {}).get("miou", {}).get("mean", np.nan),
        "by_finding": {},
        "samples": [{k: r.get(k) for k in ("example_id", "target", "answer", "control_answer")} for r in records[:6]],
    }
    for key, metric in (("presence", "vqa_score"), ("detect", "grounding.miou")):
        by: dict = {}
        for i, v in real.get(metric, {}).items():
            by.setdefault(i.rsplit("/", 1)[1], []).append((v, swapped[metric].get(i, np.nan)))
        for name, vals in by.items():
            a = np.asarray(vals)
            out["by_finding"].setdefault(name, {})[key] = [float(a[:, 0].mean()), float(np.nanmean(a[:, 1])), len(a)]
    if task_batch is not None:
        out["task_loss"] = task_losses(graphdef, params, *task_batch)
    return out


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _row_answer_losses(graphdef, params, batch: dict):
    """[B]: each row's mean answer-token loss (teacher forcing), one compile per batch shape."""
    model = nnx.merge(graphdef, params)
    logits, _ = model.forward(
        batch["input_ids"],
        jnp.swapaxes(batch["positions"], 0, 1),
        batch["attention_mask"],
        batch["pixel_values"],
        batch["vision_inputs"],
    )
    targets, weights = shift_targets(batch["input_ids"], batch["loss_mask"])
    w = weights.astype(jnp.float32)
    return (token_losses(logits, targets) * w).sum(-1) / jnp.maximum(w.sum(-1), 1.0)


def task_losses(graphdef, params, arrays: dict, tasks: np.ndarray) -> dict[str, list[float]]:
    """{task: [answer loss per token with real images, with images rolled by one row, rows]}: how much each
    task's answers depend on which image is shown (the mean over a row's answer tokens, then over rows)."""
    roll = np.roll(np.arange(len(tasks)), 1)
    swapped = dict(
        arrays,
        pixel_values=arrays["pixel_values"][roll],
        vision_inputs=jax.tree.map(lambda x: np.asarray(x)[roll], arrays["vision_inputs"]),
    )
    real, other = (np.asarray(_row_answer_losses(graphdef, params, b)) for b in (arrays, swapped))
    return {
        str(t): [float(real[tasks == t].mean()), float(other[tasks == t].mean()), int((tasks == t).sum())]
        for t in sorted(set(tasks))
    }


def plot_probe(probes: list[dict], path: Path) -> None:
    """Held-out probe over steps, real images vs images swapped: greedy presence accuracy, detection mIoU and
    the teacher-forced answer loss of the tasks whose answers depend most on the image."""
    import matplotlib  # noqa: PLC0415 heavy

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 heavy

    steps = [p["step"] for p in probes]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    for ax, key, title in (
        (axes[0], "presence_acc", "presence accuracy (greedy; 'no' to all: 0.67)"),
        (axes[1], "detect_miou", "detection mIoU (first box)"),
    ):
        ax.plot(steps, [p[key] for p in probes], "o-", label="real images")
        ax.plot(steps, [p[key + "_swapped"] for p in probes], "s--", label="images swapped")
        ax.set_title(title, fontsize=10)
        ax.set_ylim(0, 1)
    axes[0].legend(fontsize=8)
    tl = [p for p in probes if "task_loss" in p]
    for task, color in (("describe", "C2"), ("view", "C3"), ("presence", "C4"), ("detect", "C5")):
        if tl and task in tl[0]["task_loss"]:
            x = [p["step"] for p in tl]
            axes[2].plot(x, [p["task_loss"][task][0] for p in tl], "o-", color=color, label=f"{task} real")
            axes[2].plot(x, [p["task_loss"][task][1] for p in tl], "s--", color=color, label=f"{task} swapped")
    axes[2].set_title("teacher-forced answer loss (nats / token)", fontsize=10)
    axes[2].legend(fontsize=7, ncol=2)
    for ax in axes:
        ax.set_xlabel("pretraining step")
        ax.grid(alpha=0.3)
    fig.suptitle("miniature base: held-out pretraining-style probe", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_card(out: Path, cfg: PretrainConfig, mcfg, info: dict) -> None:
    """README.md model card: command, corpus, steps, time, probe results and file hashes."""
    digests = {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.iterdir())
        if p.suffix in (".json", ".safetensors") and p.is_file()
    }
    last = info["probe"]
    n_params = info["parameters"]
    lines = [
        "# dmx-jax miniature base (Qwen2.5-VL architecture)",
        "",
        f"A {n_params / 1e6:.1f}M-parameter Qwen2.5-VL-shaped model pretrained from scratch on the dmx-jax",
        "synthetic CXR pretraining corpus (`data_pipelines.synthetic.pretrain`: studies of their own seed,",
        "never a benchmark train or test study), meant to stand in for Qwen2.5-VL-7B in the CPU default run.",
        "",
        "## Reproduce",
        "```bash",
        info["command"],
        "```",
        f"Alignment: {cfg.align_steps} steps x {cfg.align_batch_size} studies (tower + merger, pooled label / side "
        f"/ box head); corpus: {cfg.steps} steps x {cfg.batch_size} rows = {cfg.steps * cfg.batch_size:,} rows (one "
        f"fresh study each), lr {cfg.optim.learning_rate} cosine"
        + (
            f"; focus: {cfg.focus_steps} steps x {cfg.batch_size} rows of the detection-heavy mix on fresh studies, "
            f"lr {cfg.focus_optim.learning_rate} cosine, tower lr {cfg.focus_vision_lr}"
            if cfg.focus_steps
            else ""
        )
        + f"; every row's answer weighted alike. Wall time of "
        f"the segments run in this run directory: {info['wall_s'] / 60:.0f} min on {info['machine']} (a stage "
        "finished in an earlier directory, such as a committed alignment, is not counted).",
        "",
        "## Architecture",
        f"vision: {mcfg.vision.depth} blocks x {mcfg.vision.hidden_size} wide, {mcfg.vision.patch_size} px patches, "
        f"2x2 merge; text: {mcfg.text.num_hidden_layers} layers x {mcfg.text.hidden_size}, head_dim "
        f"{mcfg.text.head_dim}, rope_theta {mcfg.text.rope_theta:g}, mrope_section {list(mcfg.text.mrope_section)}; "
        f"vocab {mcfg.text.vocab_size} (byte-level BPE, `tokenizer.json`). Images: {cfg.image_size} px studies "
        f"at max_pixels {cfg.max_pixels}.",
        "",
        "## Corpus",
        "Tasks (own templates): describe (every finding with severity, side, zone and box), detect",
        "(finding phrase -> all its boxes, or none), presence (13 findings, balanced yes/no), count, side, view.",
        "",
        f"## Held-out probe ({cfg.probe_studies} probe studies, step {info['steps']})",
        f"presence accuracy {last['presence_acc']:.3f} (images swapped {last['presence_acc_swapped']:.3f}); "
        f"detection mIoU {last['detect_miou']:.3f} (swapped {last['detect_miou_swapped']:.3f}).",
        "",
        "Teacher-forced answer loss per token on held-out rows, real / swapped images (rows): "
        + "; ".join(f"{t} {v[0]:.3f} / {v[1]:.3f} ({v[2]})" for t, v in last.get("task_loss", {}).items())
        + ".",
        "",
        "| finding | presence real / swapped (n) | detection mIoU real / swapped (n) |",
        "|---|---|---|",
    ]
    for name, d in sorted(last["by_finding"].items()):
        p, g = d.get("presence"), d.get("detect")
        cell = lambda v: f"{v[0]:.2f} / {v[1]:.2f} ({v[2]})" if v else "-"
        lines.append(f"| {name} | {cell(p)} | {cell(g)} |")
    lines += ["", "## Files (sha256)"] + [f"- `{k}` {v}" for k, v in digests.items()]
    (out / "README.md").write_text("\n".join(lines) + "\n")


def align(cfg: PretrainConfig, graphdef, params, adir: Path, tok, mcfg, ctx):
    """The alignment stage: the tower + merger learn the study's labels, sides and boxes through a pooled head,
    and the decoder reads the same targets at the answer start of a describe prompt, so the decoder attends to
    the image before it learns any answer prior. Returns the full params with tower and decoder trained."""
    if cfg.align_steps <= 0:
        return params
    agraph, astate = nnx.split(
        AlignModel(nnx.merge(graphdef, params), nnx.Rngs(cfg.seed), decoder_readout=cfg.align_readout)
    )
    aparams = nnx.to_pure_dict(astate)
    if stage_done(adir):
        return merge_vision(params, load_stage_params(adir, aparams, ctx.mesh))
    source = align_source(cfg, tok, mcfg)
    held_out = stack_align_rows([source.row_fn(PROBE_START + j) for j in range(cfg.align_probe_studies)])

    def on_step(step: int, metrics: dict, state) -> None:
        if step % cfg.probe_every and step != cfg.align_steps:
            return
        m = align_metrics(agraph, state.params, held_out)
        with (adir.parent / "align_probe.jsonl").open("a") as f:
            f.write(json.dumps({"step": step, "loss": metrics["loss"], **m}) + "\n")
        ctx.writer.write({"step": step, "probe_stage": "align", **{k: v for k, v in m.items() if isinstance(v, float)}})
        seen = ", ".join(f"{n} {a:.2f}" for n, a in sorted(m["label_auc_by_finding"].items(), key=lambda x: -x[1])[:4])
        print(
            f"\n[align probe] step {step}: held-out label AUC {m['label_auc']:.3f} (best: {seen}), side accuracy "
            f"{m['side_acc']:.3f}, box L1 {m['box_l1']:.3f}",
            flush=True,
        )

    spec = StageSpec("align", cfg.align_steps, cfg.align_batch_size, cfg.align_optim, cfg.save_every)
    return merge_vision(
        params, run_stage(spec, align_recipe(agraph, cfg.align_head_lr), adir, aparams, source, ctx, on_step=on_step)
    )


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m experiments.pretrain", description=__doc__.splitlines()[0])
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--run-dir", default="runs/pretrain", help="checkpoints, probe.jsonl, metrics")
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="the Hugging Face folder written at the end")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        cfg = apply_overrides(PretrainConfig(), args.overrides)
    except (ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    t0 = time.time()
    run_dir, out = Path(args.run_dir), Path(args.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    tok_path = run_dir / "tokenizer.json"
    if tok_path.is_file():
        tok = HFTokenizer.from_file(tok_path)
    else:
        print(
            f"[pretrain] training a {cfg.vocab_size}-token byte-level BPE on {cfg.tokenizer_studies} studies' texts",
            flush=True,
        )
        tok = train_byte_level_bpe(tokenizer_corpus(cfg), cfg.vocab_size, tok_path)
    mcfg = model_config(cfg, tok)
    graphdef, state = nnx.split(Qwen25VL(mcfg, nnx.Rngs(cfg.seed)))
    params = nnx.to_pure_dict(state)
    n_params = int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))
    print(
        f"[pretrain] {n_params / 1e6:.2f}M parameters, {cfg.steps} steps x {cfg.batch_size} rows, patch budget "
        f"{patch_budget(cfg)}, seq {cfg.seq_len}",
        flush=True,
    )
    mesh = make_mesh(MeshConfig(1, 1, 1), devices=jax.devices()[:1])  # one device: the CPU recipe
    writer = MetricsWriter(run_dir / "metrics.jsonl", tensorboard_dir=run_dir / "tensorboard")
    ctx = RunContext(
        mesh=mesh, writer=writer, run_config=json.loads(json.dumps(dataclasses.asdict(cfg))), seed=cfg.seed
    )
    groups, task_batch = probe_groups(cfg, tok, mcfg), task_rows(cfg, tok, mcfg, cfg.probe_studies)
    probe_file = run_dir / "probe.jsonl"
    wall = run_dir / "wall.json"  # wall time summed over the resumed segments
    wall_before = json.loads(wall.read_text())["wall_s"] if wall.is_file() else 0.0

    def run_probe(step: int, loss: float, params) -> None:
        p = probe(graphdef, params, groups, tok, task_batch)
        with probe_file.open("a") as f:
            f.write(json.dumps({"step": step, "loss": loss, **p}) + "\n")
        writer.write({"step": step, "probe_stage": "pretrain", **{k: v for k, v in p.items() if isinstance(v, float)}})
        print(
            f"\n[probe] step {step}: presence {p['presence_acc']:.3f} (swapped {p['presence_acc_swapped']:.3f}), "
            f"detection mIoU {p['detect_miou']:.3f} (swapped {p['detect_miou_swapped']:.3f})",
            flush=True,
        )
        print(
            "  answer loss real / swapped: "
            + ", ".join(f"{t} {v[0]:.3f} / {v[1]:.3f}" for t, v in p["task_loss"].items()),
            flush=True,
        )
        for r in p["samples"][:4]:
            print(
                f"  {r['example_id']}: target {r['target']!r} -> {r['answer']!r} (swapped {r['control_answer']!r})",
                flush=True,
            )
        wall.write_text(json.dumps({"wall_s": wall_before + time.time() - t0}))

    def probing(first_step: int, last_step: int):
        def on_step(step: int, metrics: dict, state) -> None:
            if step % cfg.probe_every == 0 or first_step + step == last_step:
                run_probe(first_step + step, metrics["loss"], state.params)

        return on_step

    total_steps = cfg.steps + cfg.focus_steps
    params = align(cfg, graphdef, params, run_dir / "align", tok, mcfg, ctx)
    stages = [
        (
            StageSpec("pretrain", cfg.steps, cfg.batch_size, cfg.optim, cfg.save_every),
            cfg.vision_lr,
            row_source(cfg, tok, mcfg),
            0,
        )
    ]
    if cfg.focus_steps:
        focus_optim = dataclasses.replace(cfg.focus_optim, total_steps=cfg.focus_steps)
        stages.append(
            (
                StageSpec("focus", cfg.focus_steps, cfg.batch_size, focus_optim, cfg.save_every),
                cfg.focus_vision_lr,
                row_source(cfg, tok, mcfg, FOCUS_MIX, FOCUS_START),
                cfg.steps,
            )
        )
    for spec, vision_lr, source, first_step in stages:
        sdir = run_dir / spec.name
        if not stage_done(sdir):
            recipe = dataclasses.replace(
                sft_recipe(graphdef, mcfg, mesh=mesh, per_row=cfg.loss_weighting == "row"),
                stack=functools.partial(trimmed_stack, multiple=32),  # rows ~half seq_len
                make_tx=lambda optim, lr=vision_lr: make_optimizer(optim, lr_by_prefix={"vision": lr}),
            )
            run_stage(spec, recipe, sdir, params, source, ctx, on_step=probing(first_step, total_steps))
        params = load_stage_params(sdir, params, mesh)
    writer.close()
    probes = [json.loads(ln) for ln in probe_file.read_text().splitlines()] if probe_file.is_file() else []
    if not probes or probes[-1]["step"] != total_steps:
        run_probe(total_steps, float("nan"), params)
        probes = [json.loads(ln) for ln in probe_file.read_text().splitlines()]
    save_pretrained(jax.device_get(params), out, config=mcfg)
    (out / "tokenizer.json").write_bytes(tok_path.read_bytes())
    elapsed = wall_before + time.time() - t0
    wall.write_text(json.dumps({"wall_s": elapsed}))
    info = {
        "command": "python -m experiments.pretrain " + " ".join(f"--set {o}" for o in args.overrides),
        "wall_s": elapsed,
        "machine": "a 2-core x86_64 CPU",
        "steps": total_steps,
        "probe": probes[-1],
        "parameters": n_params,
    }
    write_card(out, cfg, mcfg, info)
    plot_probe(probes, run_dir / "probe.png")
    print(f"[pretrain] wrote {out} ({sum(p.stat().st_size for p in out.iterdir()) / 1e6:.1f} MB)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
