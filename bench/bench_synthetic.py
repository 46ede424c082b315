"""Synthetic CXR benchmark: time per rendered study on one core (goal <= 5 ms at 128 px) and per task example,
and a contact sheet of samples with their finding boxes (docs/synthetic_samples.png, shown in the README).

usage: python -m bench.bench_synthetic [--n 200] [--size 128] [--no-notes]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import markdown_table, record_result
from data_pipelines.synthetic import SyntheticConfig, examples, sample
from data_pipelines.synthetic.preview import contact_sheet


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--sheet", default="docs/synthetic_samples.png")
    ap.add_argument("--no-notes", action="store_true")
    args = ap.parse_args()

    cfg = SyntheticConfig(image_size=args.size)
    sample(0, 0, cfg)  # warm caches
    t0 = time.process_time()
    studies = [sample(1, i, cfg) for i in range(args.n)]
    per_study = (time.process_time() - t0) / args.n
    t0 = time.process_time()
    for i in range(args.n):
        examples("train", i, cfg)
    per_example = (time.process_time() - t0) / args.n
    Path(args.sheet).parent.mkdir(parents=True, exist_ok=True)
    contact_sheet(studies[:8], args.sheet, columns=4, zoom=2)
    rows = [[f"{args.size} px", args.n, f"{per_study * 1e3:.2f} ms", f"{per_example * 1e3:.2f} ms", args.sheet]]
    header = [
        "image",
        "samples",
        "CPU time per study (render + findings + report)",
        "per task example (incl. VQA / reasoning)",
        "contact sheet",
    ]
    table = markdown_table(header, rows)
    print(table)
    if not args.no_notes:
        record_result("Synthetic CXR generator speed", header, rows, note="One core, process CPU time.")


if __name__ == "__main__":
    main()
