"""The miniature stage ablation: the default run (`python -m experiments.run`) with several seeds; per stage the
held-out VQA score, grounding mIoU and report rule-CheXpert micro-F1, mean over seeds with the spread, plus
each seed's 95% bootstrap CI. Reuses finished run directories (a rerun only evaluates what is missing).

usage: python -m bench.bench_ablation [--seeds 0,1,2] [--root runs/ablation] [--set key=value ...] [--no-notes]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import markdown_table, record_result  # noqa: E402

STAGES = ("sft", "cold_start", "grpo")
METRICS = (("VQA score", lambda m: m.get("vqa_score")),
           ("grounding mIoU", lambda m: m.get("grounding", {}).get("miou")),
           ("report rule-CheXpert micro-F1", lambda m: m.get("report_label_f1", {}).get("micro_f1_14")),
           ("grounded-format rate", lambda m: {"mean": m.get("grounded_format_rate"), "ci": [np.nan, np.nan]}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--root", default="runs/ablation")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--no-notes", action="store_true")
    args = ap.parse_args()
    results = {}
    for seed in (int(s) for s in args.seeds.split(",")):
        run_dir = Path(args.root) / f"seed{seed}"
        cmd = [sys.executable, "-m", "experiments.run", "--run-dir", str(run_dir), "--set", f"seed={seed}"]
        for o in args.overrides:
            cmd += ["--set", o]
        print(" ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        results[seed] = {st: json.loads((run_dir / "eval" / f"{st}.json").read_text())["metrics"] for st in STAGES}
    rows = []
    for st in STAGES:
        row = [st]
        for _, get in METRICS:
            vals = [get(results[s][st]) or {"mean": np.nan} for s in results]
            means = np.array([v["mean"] for v in vals], float)
            per_seed = ", ".join(f"{v['mean']:.3f}" + (f" [{v['ci'][0]:.2f}, {v['ci'][1]:.2f}]"
                                                       if np.isfinite(v.get("ci", [np.nan])[0]) else "")
                                 for v in vals)
            row.append(f"{np.nanmean(means):.3f} ± {np.nanstd(means):.3f} ({per_seed})")
        rows.append(row)
    header = ["stage", *(m for m, _ in METRICS)]
    table = markdown_table(header, rows)
    print(table)
    if not args.no_notes:
        record_result("Miniature stage ablation over seeds", header, rows,
                      note=f"Default run, seeds {args.seeds}. Cells: mean ± std over seeds (each seed's value "
                      "[95% bootstrap CI over held-out "
                      "examples]). Held-out synthetic test split; reasoning stages answer VQA / grounding / referring "
                      "with the <think> suffix, reports with the plain prompt.")


if __name__ == "__main__":
    main()
