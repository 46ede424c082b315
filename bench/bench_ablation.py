"""The miniature ablation over seeds: the stage table and the reward ablation the paper lacks.

1. Stage table: the default run (`python -m experiments.run`) per seed; per stage the held-out VQA score,
   grounding mIoU and Acc@0.5, report rule-CheXpert micro-F1, grounded-format rate and the images-swapped drop;
   per seed with 95% bootstrap CIs, and the mean over seeds. Stage differences (cold start - SFT, GRPO - cold
   start, GRPO - SFT) as paired bootstrap CIs on the same held-out prompts, per seed.
2. Reward ablation: GRPO with the `paper` reward preset from the same cold-start checkpoint as the default run's
   GRPO (`grounded` preset): VQA, mIoU, Acc@0.5, the share of image-task answers citing a box and the IoU of the
   cited boxes with the truth, per seed, and the paired grounded - paper differences.

Reuses finished run directories (a rerun only computes what is missing). The paper-preset run copies the seed's
finished sft / cold_start stages and runs `--stages grpo` on them.

usage: python -m bench.bench_ablation [--seeds 0,1,2] [--root runs/ablation] [--set key=value ...]
                                      [--no-reward-ablation] [--no-notes]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import markdown_table, record_result
from dmx_jax.eval.paired import paired_by_key
from experiments.evaluate import citation_stats, example_scores
from experiments.report import DIFF_PAIRS, stage_differences

STAGES = ("sft", "cold_start", "grpo")
BASE = "base"  # eval/base.json: the starting checkpoint zero-shot (runs from a pretrained base)
BASELINE = "question_only"  # eval/question_only.json: the no-image, no-model baseline (data_pipelines.blind)
METRICS = (
    ("VQA score", lambda m: m.get("vqa_score")),
    ("grounding mIoU", lambda m: m.get("grounding", {}).get("miou")),
    ("Acc@0.5", lambda m: m.get("grounding", {}).get("acc_at_0_5")),
    ("report rule-CheXpert micro-F1", lambda m: m.get("report_label_f1", {}).get("micro_f1_14")),
    ("grounded-format rate", lambda m: {"mean": m.get("grounded_format_rate", np.nan), "ci": [np.nan] * 2}),
    ("image drop VQA", lambda m: m.get("image_control", {}).get("drop", {}).get("vqa_score")),
    ("image drop mIoU", lambda m: m.get("image_control", {}).get("drop", {}).get("grounding.miou")),
)
PAIRED = (("vqa_score", "VQA"), ("grounding.miou", "mIoU"), ("grounding.acc_at_0_5", "Acc@0.5"))


def run(run_dir: Path, seed: int, overrides: list[str], stages: str | None = None) -> None:
    cmd = [sys.executable, "-m", "experiments.run", "--run-dir", str(run_dir), "--set", f"seed={seed}"]
    for o in overrides:
        cmd += ["--set", o]
    if stages:
        cmd += ["--stages", stages]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def load_eval(run_dir: Path, stage: str) -> dict:
    return json.loads((run_dir / "eval" / f"{stage}.json").read_text())


def cell(s) -> str:
    """mean [lo, hi] of a {mean, ci} summary ('–' when missing)."""
    if not isinstance(s, dict) or s.get("mean") is None or not np.isfinite(s["mean"]):
        return "–"
    lo, hi = s.get("ci", [np.nan, np.nan])
    return f"{s['mean']:.3f}" + (f" [{lo:.2f}, {hi:.2f}]" if np.isfinite(lo) else "")


def mean_cell(summaries: list) -> str:
    """mean ± std over seeds of the summaries' means."""
    vals = np.array(
        [s["mean"] if isinstance(s, dict) and s.get("mean") is not None else np.nan for s in summaries], float
    )
    if not np.isfinite(vals).any():
        return "–"
    return f"{np.nanmean(vals):.3f} ± {np.nanstd(vals):.3f}"


def diff_cell(d) -> str:
    """A paired difference cell; ' *' when its 95% CI excludes 0."""
    return cell(d) + (" *" if isinstance(d, dict) and d.get("excludes_zero") else "") if d else "–"


def stage_tables(evals: dict) -> tuple[list[str], list[list], list[str], list[list]]:
    """evals {seed: {stage: eval json}} -> (header, rows) of the stage table and of the paired differences."""
    header = ["seed", "stage", *(name for name, _ in METRICS)]
    rows = []
    for seed, by_stage in evals.items():
        for st in (BASE, *STAGES, BASELINE):
            if st in by_stage:
                rows.append([seed, st, *(cell(get(by_stage[st]["metrics"])) for _, get in METRICS)])
    for st in (BASE, *STAGES, BASELINE):
        have = [by_stage[st]["metrics"] for by_stage in evals.values() if st in by_stage]
        if have:
            rows.append(["mean ± std", st, *(mean_cell([get(m) for m in have]) for _, get in METRICS)])
    d_header = ["seed", "comparison", *(f"Δ {label}" for _, label in PAIRED)]
    d_rows = []
    for seed, by_stage in evals.items():
        diffs = stage_differences({st: e["records"] for st, e in by_stage.items()})
        for first, second in DIFF_PAIRS:
            d = diffs.get(f"{second}-{first}")
            if d is not None:
                d_rows.append([seed, f"{second} − {first}", *(diff_cell(d.get(k)) for k, _ in PAIRED)])
    return header, rows, d_header, d_rows


def reward_rows(runs: dict) -> tuple[list[str], list[list], list[list]]:
    """runs {seed: {preset: grpo eval json}} -> (header, rows per seed/preset + means, paired rows)."""
    header = ["seed", "reward preset", "VQA", "mIoU", "Acc@0.5", "answers citing a box", "IoU of cited boxes"]
    rows, paired, by_preset = [], [], {}
    for seed, presets in runs.items():
        for preset, ev in presets.items():
            m = ev["metrics"]
            cites = m.get("citations") or citation_stats(ev["records"])
            vals = [
                m.get("vqa_score"),
                m.get("grounding", {}).get("miou"),
                m.get("grounding", {}).get("acc_at_0_5"),
                cites["cite_rate"],
                cites["cited_box_iou"],
            ]
            by_preset.setdefault(preset, []).append(vals)
            rows.append([seed, preset, *(cell(v) for v in vals)])
        if {"paper", "grounded"} <= set(presets):
            a, b = example_scores(presets["paper"]["records"]), example_scores(presets["grounded"]["records"])
            paired.append(
                [
                    seed,
                    "grounded − paper",
                    *(diff_cell(paired_by_key(a[k], b[k]) if k in a and k in b else None) for k, _ in PAIRED),
                ]
            )
    for preset, vals in by_preset.items():
        rows.append(["mean ± std", preset, *(mean_cell([v[i] for v in vals]) for i in range(5))])
    return header, rows, paired


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--root", default="runs/ablation")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--no-reward-ablation", action="store_true")
    ap.add_argument("--no-notes", action="store_true")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    evals, rewards = {}, {}
    for seed in seeds:
        run_dir = Path(args.root) / f"seed{seed}"
        if not all((run_dir / "eval" / f"{st}.json").is_file() for st in STAGES):
            run(run_dir, seed, args.overrides)
        evals[seed] = {st: load_eval(run_dir, st) for st in STAGES}
        for extra in (BASE, BASELINE):
            if (run_dir / "eval" / f"{extra}.json").is_file():
                evals[seed][extra] = load_eval(run_dir, extra)
        if args.no_reward_ablation:
            continue
        paper_dir = Path(args.root) / f"seed{seed}-paper"
        if not (paper_dir / "eval" / "grpo.json").is_file():
            for st in ("sft", "cold_start"):  # the same finished stages, GRPO with the paper reward
                if not (paper_dir / st).exists():
                    shutil.copytree(run_dir / st, paper_dir / st)
            run(paper_dir, seed, [*args.overrides, "rl.reward_preset=paper"], stages="grpo")
        rewards[seed] = {"grounded": evals[seed]["grpo"], "paper": load_eval(paper_dir, "grpo")}
    header, rows, d_header, d_rows = stage_tables(evals)
    out = [markdown_table(header, rows), "", markdown_table(d_header, d_rows)]
    if rewards:
        r_header, r_rows, r_paired = reward_rows(rewards)
        out += [
            "",
            markdown_table(r_header, r_rows),
            "",
            markdown_table(["seed", "comparison", "Δ VQA", "Δ mIoU", "Δ Acc@0.5"], r_paired),
        ]
    print("\n".join(out))
    if args.no_notes:
        return
    note = (
        f"Default run, seeds {args.seeds}{' with ' + ' '.join(args.overrides) if args.overrides else ''}. "
        "Cells: value [95% bootstrap CI over held-out examples]; 'mean ± std' over seeds. Image drop: real "
        "minus images-swapped score on the same prompts (paired CI)."
    )
    record_result("Miniature stage ablation over seeds", header, rows, note=note, key_columns=2)
    record_result(
        "Miniature stage differences (paired, same prompts)",
        d_header,
        d_rows,
        note="Paired bootstrap over the held-out prompts; * the 95% CI excludes 0.",
        key_columns=2,
    )
    if rewards:
        record_result(
            "Reward ablation: paper vs grounded preset from the same cold-start checkpoint",
            r_header,
            r_rows,
            key_columns=2,
            note="GRPO from each seed's cold-start checkpoint; citing: share of VQA / grounding outputs "
            "with a box anywhere; IoU of cited boxes: mean best IoU with a truth box over the cited boxes "
            "of citing answers to prompts with truth boxes. Paired grounded − paper: "
            + "; ".join(" ".join(str(c) for c in r) for r in r_paired),
        )


if __name__ == "__main__":
    main()
