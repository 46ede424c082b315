"""Run outputs: Report Arena among the stages, plots, grounded gallery, HF export and summary.md."""

from __future__ import annotations

import csv
import json
import textwrap
from pathlib import Path

import numpy as np
from flax import nnx

from dmx_jax.eval.arena import RubricJudge, run_arena
from dmx_jax.eval.arena.records import Report
from dmx_jax.eval.paired import stage_differences as paired_stages
from dmx_jax.hf import save_adapter, save_pretrained
from experiments.evaluate import boxes_in, example_scores, printable

STAGE_ORDER = ("base", "sft", "cold_start", "grpo")  # base: the starting checkpoint, zero-shot


def _summary_cell(s) -> str:
    if not isinstance(s, dict) or "mean" not in s:
        return "–"
    lo, hi = s.get("ci", [np.nan, np.nan])
    return f"{s['mean']:.3f} [{lo:.3f}, {hi:.3f}]"


BASELINE = "question_only"  # data_pipelines.blind: the training set's answer to the same question, no image


def stage_table(results: dict, baseline: dict | None = None) -> str:
    rows = [
        "| stage | VQA score | grounding mIoU | grounding Acc@0.5 | report ROUGE-L | report BLEU-4 | "
        "rule-CheXpert micro-F1 (14) | grounded-format rate | VQA / mIoU, images swapped | image drop VQA / mIoU |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for st in STAGE_ORDER:
        if st not in results:
            continue
        m = results[st]
        g, nlg, lf = m.get("grounding", {}), m.get("report_nlg", {}), m.get("report_label_f1", {})
        cells = [
            m.get("vqa_score"),
            g.get("miou"),
            g.get("acc_at_0_5"),
            nlg.get("rouge_l"),
            nlg.get("bleu_4"),
            lf.get("micro_f1_14"),
        ]
        ctrl = m.get("image_control", {})
        swapped = (
            f"{ctrl['vqa_score']['mean']:.3f} / "
            f"{ctrl.get('grounding', {}).get('miou', {}).get('mean', float('nan')):.3f}"
            if "vqa_score" in ctrl
            else "–"
        )
        drop = ctrl.get("drop", {})
        drops = " / ".join(_summary_cell(drop.get(k)) for k in ("vqa_score", "grounding.miou")) if drop else "–"
        rows.append(
            f"| {st} | "
            + " | ".join(_summary_cell(c) for c in cells)
            + f" | {m.get('grounded_format_rate', float('nan')):.2f} | {swapped} | {drops} |"
        )
    if baseline:
        g = baseline.get("grounding", {})
        rows.append(
            f"| {BASELINE} (no model, no image) | "
            + " | ".join(_summary_cell(c) for c in (baseline.get("vqa_score"), g.get("miou"), g.get("acc_at_0_5")))
            + " | – | – | – | – | – | – |"
        )
    rows.append("")
    rows.append(
        "Cells: value [95% bootstrap CI over held-out examples]. Image drop: real minus images-swapped "
        "score on the same prompts, paired 95% CI (a CI above 0 means the answers use the image)."
        + (
            f" {BASELINE}: the most common training answer to the same question text (grounding: the "
            "median training box of the same prompt), scored alike: what the question alone earns."
            if baseline
            else ""
        )
    )
    return "\n".join(rows)


def question_type_table(results: dict) -> str:
    """VQA score real / images swapped per question type and stage, with the paired drop's CI ('' when no stage
    ran the control): which kinds of question read the image."""
    by_stage = {
        st: results[st].get("image_control", {}).get("drop_by_question_type") for st in STAGE_ORDER if st in results
    }
    by_stage = {st: v for st, v in by_stage.items() if v}
    if not by_stage:
        return ""
    types = sorted({t for v in by_stage.values() for t in v})
    rows = ["| question type | n | " + " | ".join(by_stage) + " |", "|---|---|" + "---|" * len(by_stage)]
    for t in types:
        n = max(v[t]["drop"]["n"] for v in by_stage.values() if t in v)
        cells = [
            f"{v[t]['real']:.2f} / {v[t]['swapped']:.2f}, drop {_summary_cell(v[t]['drop'])}" if t in v else "–"
            for v in by_stage.values()
        ]
        rows.append(f"| {t} | {n} | " + " | ".join(cells) + " |")
    rows += ["", "VQA score by question type: real / images swapped, and the paired drop [95% CI]."]
    return "\n".join(rows)


DIFF_PAIRS = (("base", "sft"), ("sft", "cold_start"), ("cold_start", "grpo"), ("sft", "grpo")) + tuple(
    (BASELINE, st) for st in STAGE_ORDER
)
DIFF_METRICS = (("vqa_score", "VQA"), ("grounding.miou", "mIoU"), ("grounding.acc_at_0_5", "Acc@0.5"))


def stage_differences(outputs: dict, n_bootstrap: int = 1000) -> dict:
    """{"later-earlier": {metric: paired summary}} from the stages' evaluation records (same prompts); the
    question-only baseline's records, when outputs holds them under BASELINE, pair with every stage."""
    return paired_stages({st: example_scores(recs) for st, recs in outputs.items()}, DIFF_PAIRS, n_bootstrap)


def difference_table(diffs: dict) -> str:
    """Markdown table of paired stage differences; '*' marks a 95% CI that excludes 0."""
    if not diffs:
        return ""
    rows = [
        "| comparison | " + " | ".join(f"Δ {label}" for _, label in DIFF_METRICS) + " |",
        "|---|" + "---|" * len(DIFF_METRICS),
    ]
    for name, d in diffs.items():
        cells = [
            (_summary_cell(d.get(k)) + (" *" if d.get(k, {}).get("excludes_zero") else "")) for k, _ in DIFF_METRICS
        ]
        rows.append(f"| {name.replace('-', ' − ')} | " + " | ".join(cells) + " |")
    rows += [
        "",
        "Paired differences on the same held-out prompts: mean [95% bootstrap CI over examples]; * the CI excludes 0.",
    ]
    return "\n".join(rows)


def citation_line(results: dict) -> str:
    """Per stage: the share of VQA / grounding outputs citing a box, and of the reasoning answers to grounding
    prompts whose answer box is one their trace cites."""
    cells = []
    for st in STAGE_ORDER:
        c = results.get(st, {}).get("citations", {})
        if "cite_rate" in c:
            copy = c.get("trace_box_copy_rate")
            cells.append(
                f"{st} {c['cite_rate']['mean']:.2f}"
                + (f" (answer box copied from the trace {copy['mean']:.2f})" if copy else "")
            )
    return "Outputs citing a box: " + "; ".join(cells) + "." if cells else ""


def arena_line(arena: dict) -> str:
    """One summary line: Bradley-Terry ratings (Elo scale) with CIs, and whether any stage separated."""
    comb = arena["combined"]
    ratings = comb.get("ratings", {})
    order = comb.get("ranking", list(ratings))
    cells = [
        f"{st} {ratings[st]['bt_elo_scale']:.0f} [{ratings[st]['bt_elo_scale_ci'][0]:.0f}, "
        f"{ratings[st]['bt_elo_scale_ci'][1]:.0f}]"
        for st in order
        if st in ratings
    ]
    cis = [ratings[st]["bt_elo_scale_ci"] for st in order if st in ratings]
    separated = any(a[0] > b[1] or b[0] > a[1] for i, a in enumerate(cis) for b in cis[i + 1 :])
    judges = ", ".join(j.get("label", j.get("id", "?")) for j in arena.get("judges", []))
    verdict = (
        "some stages separate (non-overlapping 95% CIs)"
        if separated
        else "no stage separates from another (95% CIs overlap)"
    )
    return (
        f"Report Arena ({judges}; {arena.get('n_studies', '?')} studies, {comb.get('n_comparisons', '?')} "
        f"pairs): Bradley-Terry ratings on the Elo scale {', '.join(cells)}; {verdict}."
    )


def run_stage_arena(outputs: dict, run_dir: Path) -> dict | None:
    systems = {}
    refs = {}
    for st in STAGE_ORDER:
        if st not in outputs:
            continue
        recs = [r for r in outputs[st] if r["task"] in ("findings", "impression")]
        systems[st] = {r["example_id"]: Report(r["answer"] or "(empty)") for r in recs}
        for r in recs:
            refs[r["example_id"]] = Report(r["target"], tuple(tuple(b) for b in r["boxes_true"]))
    if len(systems) < 2 or not refs:
        return None
    result = run_arena(refs, systems, [RubricJudge()], cache=run_dir / "arena_cache", n_bootstrap=200)
    (run_dir / "eval" / "arena.json").write_text(json.dumps(result, indent=1))
    return result


def smoothed(values, window: int) -> np.ndarray:
    """Trailing moving average (the first points average what exists so far)."""
    v = np.asarray(values, np.float64)
    c = np.cumsum(np.concatenate([[0.0], v]))
    i = np.arange(1, len(v) + 1)
    return (c[i] - c[np.maximum(i - window, 0)]) / np.minimum(i, window)


def validation_points(recs: list[dict]) -> list[tuple[int, dict]]:
    """(step, record) of the GRPO validation records in metrics.jsonl, the last one per step (a resumed run may
    have written a step twice)."""
    by_step = {r["step"]: r for r in recs if r.get("train_stage") == "grpo" and "val/reward/overall" in r}
    return sorted(by_step.items())


def validation_line(recs: list[dict]) -> str:
    """One summary line: the GRPO validation reward (and grounding mIoU) at its first and last step."""
    val = validation_points(recs)
    if not val:
        return ""
    (s0, v0), (s1, v1) = val[0], val[-1]
    line = (
        f"GRPO validation (greedy answers to held-out reasoning prompts, the training reward; "
        f"{len(val)} points): reward {v0['val/reward/overall']:.3f} at step {s0} -> "
        f"{v1['val/reward/overall']:.3f} at step {s1}"
    )
    if "val/grounding_miou" in v1:
        line += f", grounding IoU {v0.get('val/grounding_miou', float('nan')):.3f} -> {v1['val/grounding_miou']:.3f}"
    return line + "."


def skipped_line(recs: list[dict]) -> str:
    """One summary line: per stage, the training examples dropped as too long (data.on_too_long=skip)."""
    per_stage: dict[str, int] = {}
    for r in recs:
        if r.get("data/skipped_too_long"):
            per_stage[r["train_stage"]] = per_stage.get(r["train_stage"], 0) + int(r["data/skipped_too_long"])
    if not per_stage:
        return ""
    return (
        "Examples skipped as longer than the sequence budget (data.on_too_long=skip; `data/skipped_too_long` "
        "in metrics): " + ", ".join(f"{k} {v}" for k, v in per_stage.items()) + "."
    )


def read_metrics(run_dir: Path) -> list[dict]:
    """The records of run_dir/metrics.jsonl ([] when the run wrote none)."""
    path = run_dir / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []


def plots(
    run_dir: Path, recs: list[dict], results: dict, arena: dict | None, baseline: dict | None = None
) -> list[str]:
    """plots/curves.png (SFT losses, GRPO reward with a moving average) and plots/stages.png (per-stage bars with
    CIs; x marks the images-swapped score, a dashed line the question-only baseline)."""
    import matplotlib  # noqa: PLC0415 heavy

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 heavy

    out = run_dir / "plots"
    out.mkdir(exist_ok=True)
    written = []
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for st in ("sft", "cold_start"):
        pts = [(r["step"], r["loss"]) for r in recs if r.get("train_stage") == st and "loss" in r]
        if pts:
            axes[0].plot(*zip(*pts), label=st)
    axes[0].set(title="SFT losses", xlabel="step", ylabel="loss")
    if axes[0].lines:
        axes[0].legend()
    pts = [(r["step"], r["reward/overall"]) for r in recs if r.get("train_stage") == "grpo" and "reward/overall" in r]
    if pts:
        steps, reward = zip(*pts)
        window = max(len(pts) // 4, 1)
        axes[1].plot(steps, reward, color="C2", alpha=0.35, label="per step")
        axes[1].plot(steps, smoothed(reward, window), color="C2", label=f"moving average ({window} steps)")
    val = validation_points(recs)
    if val:
        axes[1].plot(
            *zip(*[(st, v["val/reward/overall"]) for st, v in val]),
            "o-",
            color="C3",
            label="held-out validation (greedy)",
        )
    if axes[1].lines:
        axes[1].legend()
    axes[1].set(title="GRPO mean reward", xlabel="step", ylabel="reward")
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=110)
    plt.close(fig)
    written.append("plots/curves.png")
    names = [s for s in STAGE_ORDER if s in results]
    metrics = [
        ("VQA score", lambda m: m.get("vqa_score"), True),
        ("grounding mIoU", lambda m: m.get("grounding", {}).get("miou"), True),
        ("report rule-CheXpert micro-F1", lambda m: m.get("report_label_f1", {}).get("micro_f1_14"), False),
    ]
    fig, axes = plt.subplots(1, len(metrics) + (1 if arena else 0), figsize=(4.2 * (len(metrics) + 1), 3.4))
    for ax, (title, get, has_controls) in zip(axes, metrics):  # controls: swapped images, question only
        vals = [get(results[n]) or {"mean": 0.0, "ci": [0.0, 0.0]} for n in names]
        mean = [v["mean"] for v in vals]
        err = np.array([[v["mean"] - v["ci"][0], v["ci"][1] - v["mean"]] for v in vals]).T
        ax.bar(names, mean, yerr=err, capsize=4, color=["C0", "C1", "C2"][: len(names)])
        swapped = [(n, get(results[n].get("image_control") or {})) for n in names] if has_controls else []
        swapped = [(n, v["mean"]) for n, v in swapped if isinstance(v, dict)]
        if swapped:
            ax.scatter(*zip(*swapped), marker="x", color="k", zorder=3, label="images swapped")
        blind = get(baseline) if baseline and has_controls else None
        if blind:
            ax.axhline(blind["mean"], color="k", linestyle="--", linewidth=1, label="question only")
        if swapped or blind:
            ax.legend(fontsize=7, loc="upper right")
        ax.set(title=title + " (95% CI)", ylim=(0, 1))
    if arena:
        ax = axes[-1]
        table = arena["combined"]["ratings"]
        bt = [table[n]["bt_elo_scale"] for n in names if n in table]
        ci = np.array([table[n]["bt_elo_scale_ci"] for n in names if n in table])
        ax.bar([n for n in names if n in table], bt, yerr=np.abs(ci.T - np.array(bt)), capsize=4, color="C4")
        ax.set(title="Report Arena (BT, Elo scale)")
    fig.tight_layout()
    fig.savefig(out / "stages.png", dpi=110)
    plt.close(fig)
    written.append("plots/stages.png")
    return written


def gallery(run_dir: Path, outputs: dict, test_ex: list, n: int = 6) -> list[str]:
    """One figure per stage: held-out grounded questions, truth boxes green, the model's cited boxes red."""
    import matplotlib  # noqa: PLC0415 heavy

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 heavy
    from matplotlib.patches import Rectangle  # noqa: PLC0415 heavy

    out = run_dir / "gallery"
    out.mkdir(exist_ok=True)
    by_id = {e.example_id: e for e in test_ex}
    written = []
    for stage in [s for s in STAGE_ORDER if s in outputs]:
        recs = [r for r in outputs[stage] if r["task"] in ("grounding", "vqa") and r["boxes_true"]][:n]
        if not recs:
            continue
        fig, axes = plt.subplots(1, len(recs), figsize=(3.2 * len(recs), 3.9), squeeze=False)
        for ax, rec in zip(axes[0], recs):
            ex = by_id[rec["example_id"]]
            mw, mh = rec["image_size"]  # model-input frame of all boxes
            ax.imshow(np.clip(np.asarray(ex.images[-1]), 0, 1), cmap="gray", extent=(0, mw, mh, 0))
            for b in rec["boxes_true"]:
                ax.add_patch(Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], fill=False, ec="lime", lw=1.5))
            for k, b in enumerate(boxes_in(rec["output"])[:4]):
                ax.add_patch(Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], fill=False, ec="red", lw=1.2, ls="--"))
                ax.text(b[0] + 1, b[1] + 5, str(k + 1), color="red", fontsize=7)
            ax.set_title(
                printable(f"{_wrap(ex.prompt, 38)}\npred: {rec['answer'][:28]!s}\ntruth: {rec['target'][:28]}"),
                fontsize=7,
            )
            ax.set_xlim(0, mw), ax.set_ylim(mh, 0), ax.axis("off")
        fig.suptitle(f"{stage}: truth boxes green, cited boxes red (dashed)", fontsize=9)
        fig.tight_layout(rect=(0, 0, 1, 0.93))  # leave the suptitle its own band above the titles
        name = f"gallery/{stage}.png"
        fig.savefig(run_dir / name, dpi=110)
        plt.close(fig)
        written.append(name)
    return written


def _wrap(text: str, width: int) -> str:
    return "\n".join(textwrap.wrap(text, width)[:2])


def metrics_csv(run_dir: Path, records: list[dict]) -> None:
    """metrics.jsonl's records -> metrics.csv (one column per key seen, blanks where a record lacks it)."""
    if not records:
        return
    keys = list(dict.fromkeys(k for r in records for k, v in r.items() if not isinstance(v, (list, dict))))
    with (run_dir / "metrics.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(records)


def write_outputs(
    cfg,
    run_dir: Path,
    graphdef,
    params,
    mcfg,
    results: dict,
    outputs: dict,
    test_ex: list,
    *,
    export: bool,
    baseline: tuple[dict, list[dict]] | None = None,
) -> str:
    """baseline: (metrics, records) of the question-only baseline (experiments.pipeline), or None."""
    baseline_metrics, baseline_records = baseline or (None, None)
    recs = read_metrics(run_dir)
    metrics_csv(run_dir, recs)
    arena = run_stage_arena(outputs, run_dir) if outputs else None
    figs = plots(run_dir, recs, results, arena, baseline_metrics) if results else []
    gal = gallery(run_dir, outputs, test_ex)
    export_note = ""
    if export:
        save_pretrained(nnx.merge(graphdef, params), run_dir / "hf_export", config=mcfg)
        for model_file in sorted((run_dir / "tokenizer").glob("*.model"))[-1:]:  # tiny run: its SentencePiece
            (run_dir / "hf_export" / "dmx_tokenizer.model").write_bytes(model_file.read_bytes())
        tok_json = (
            Path(cfg.data.tokenizer)
            if cfg.data.tokenizer
            else Path(cfg.hf_checkpoint) / "tokenizer.json"
            if cfg.hf_checkpoint
            else None
        )
        if tok_json is not None and tok_json.is_file():  # a checkpoint's tokenizer.json
            (run_dir / "hf_export" / "tokenizer.json").write_bytes(tok_json.read_bytes())
        export_note = f"Hugging Face export: `{run_dir / 'hf_export'}` (opens with transformers' from_pretrained)."
        if mcfg.text.lora.rank:  # the adapters alone too, for peft on the base checkpoint
            save_adapter(params, mcfg, run_dir / "hf_adapter", base_model=cfg.hf_checkpoint)
            export_note += (
                f" LoRA adapters: `{run_dir / 'hf_adapter'}` (peft.PeftModel.from_pretrained on the base checkpoint)."
            )
    scored = {**outputs, BASELINE: baseline_records} if baseline_records and outputs else outputs
    diffs = stage_differences(scored, n_bootstrap=cfg.eval.bootstrap) if outputs else {}
    if diffs:
        (run_dir / "eval" / "differences.json").write_text(json.dumps(diffs, indent=1))
    lines = [
        f"# dmx-jax run `{cfg.name}`",
        "",
        stage_table(results, baseline_metrics),
        "",
        difference_table(diffs),
        "",
        question_type_table(results),
        "",
        "VQA score: exact match for <=2-word answers, item F1 for `|` lists, BLEU-1/ROUGE-L mean for sentences. "
        "Grounding: predicted box = first box in the answer, model-input pixels. "
        "Grounded-format rate: share of the reasoning-task prompts (VQA, grounding, referring) answered as "
        "<think> steps citing a box, then \\boxed{}. Images swapped: the same VQA and grounding prompts, "
        "each given another prompt's image; scores that do not drop mean the answers come from the text. "
        "CIs: 95% bootstrap over examples.",
        "",
    ]
    lines += [citation_line(results), ""]
    for line in (validation_line(recs), skipped_line(recs)):
        if line:
            lines += [line, ""]
    if arena:
        lines += [arena_line(arena), ""]
    lines += [f"![{f}]({f})" for f in figs] + [""] + [f"![{g}]({g})" for g in gal[-1:]] + ["", export_note]
    text = "\n".join(lines)
    (run_dir / "summary.md").write_text(text)
    return text
