"""One GPU from a TPU slice's fit rows: arithmetic, since no GPU program can be compiled on this machine.

A row compiled for an n-chip slice holds, per chip, 1/n of the sharded state (arguments, outputs, resident
buffers) and the temporaries of that chip's slice of the batch. One GPU running the same per-device slice
(accumulation and micro-batches x n) holds the whole state and the same temporaries:

    peak_gpu = n x (arguments + outputs - aliased + resident) + temporaries

Replicated arguments (the rng, small batch leaves) are counted n times and the FSDP all-gather buffers inside
the temporaries do not exist on one device, so the estimate errs high. The reward program is not sliced by the
runner: its temporaries count n times too. XLA:GPU fuses and schedules differently from libtpu; the row is a
budget, not a measurement.

    python -m experiments.aot --config qwen2_5_vl_7b_lora --topology v6e-4 --json > rows.jsonl
    python -m experiments.gpu_fit rows.jsonl --topology v6e-4 --hbm 79.6
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from experiments.aot import markdown
from experiments.tpu_compile import Row

UNSLICED_STEPS = ("reward",)  # programs the runner runs over the whole batch at once


def gpu_row(row: Row, hbm_gib: float, label: str = "1 GPU") -> Row:
    """The one-GPU row for a compiled slice row (see the module docstring); a row without memory stays an error."""
    n = row.chips
    out = dataclasses.replace(
        row,
        topology=label,
        chips=1,
        hbm_gb=hbm_gib,
        compile_s=0.0,
        step_time_s=None,
        mfu=None,
        xla_flops=None,
        xla_bytes=None,
        shapes=f"{row.shapes}; per-device slice of {row.topology} x {n}",
    )
    if row.peak_gb is None:
        return out
    state = row.argument_gb + row.output_gb - row.alias_gb + row.resident_gb
    temp = row.temp_gb * (n if row.step in UNSLICED_STEPS else 1)
    out.argument_gb, out.output_gb, out.alias_gb = n * row.argument_gb, n * row.output_gb, n * row.alias_gb
    out.resident_gb, out.temp_gb = n * row.resident_gb, temp
    out.peak_gb = n * state + temp
    out.fits, out.headroom = out.peak_gb <= hbm_gib, 1 - out.peak_gb / hbm_gib
    return out


def read_rows(lines) -> list[Row]:
    """Rows from `python -m experiments.aot --json` output (other lines skipped)."""
    fields = {f.name for f in dataclasses.fields(Row)}
    rows = []
    for line in lines:
        line = line.strip()
        if line.startswith("{"):
            rows.append(Row(**{k: v for k, v in json.loads(line).items() if k in fields}))
    return rows


def main(argv=None) -> int:

    ap = argparse.ArgumentParser(prog="python -m experiments.gpu_fit", description=__doc__.splitlines()[0])
    ap.add_argument("rows", help="a file of `python -m experiments.aot --json` lines")
    ap.add_argument("--topology", required=True, help="the slice whose rows to carry over (e.g. v6e-4)")
    ap.add_argument("--hbm", type=float, default=79.6, help="GPU memory in GiB (H100 80 GB: 79.6)")
    args = ap.parse_args(argv)
    with open(args.rows) as f:
        rows = [r for r in read_rows(f) if r.topology == args.topology]
    if not rows:
        print(f"error: {args.rows} holds no rows of topology {args.topology!r}", file=sys.stderr)
        return 2
    label = f"1 GPU {args.hbm:g} GiB"
    print(markdown([gpu_row(r, args.hbm, label) for r in rows]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
