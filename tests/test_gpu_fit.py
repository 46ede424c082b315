"""The one-GPU fit rows derived from a slice's compiled rows (experiments.gpu_fit): the arithmetic and the
round trip through `python -m experiments.aot --json` lines."""

from __future__ import annotations

import pytest

from experiments.aot import row_json
from experiments.gpu_fit import gpu_row, main, read_rows
from experiments.tpu_compile import Row


def _row(step: str, **mem) -> Row:
    row = Row("grpo", step, "v6e-4", 4, 32.0, 8_330_000_000, 320, 1664, "[320,640+1024]")
    for k, v in mem.items():
        setattr(row, k, v)
    return row


def test_the_state_counts_once_per_chip_and_the_slice_temporaries_once():
    sliced = gpu_row(
        _row("update", argument_gb=4.0, output_gb=1.0, alias_gb=1.0, temp_gb=2.0, resident_gb=0.5, peak_gb=6.5), 79.6
    )
    assert sliced.peak_gb == pytest.approx(4 * (4.0 + 1.0 - 1.0 + 0.5) + 2.0)
    assert (sliced.chips, sliced.hbm_gb, sliced.fits) == (1, 79.6, True)
    assert sliced.headroom == pytest.approx(1 - 20.0 / 79.6)
    whole = gpu_row(
        _row("reward", argument_gb=0.5, output_gb=0.0, alias_gb=0.0, temp_gb=3.0, resident_gb=4.0, peak_gb=7.5), 20.0
    )
    assert whole.peak_gb == pytest.approx(4 * 7.5) and not whole.fits  # not sliced: its temporaries too
    assert gpu_row(_row("rollout", error="boom"), 79.6).peak_gb is None


def test_rows_round_trip_through_the_fit_checks_json_lines(tmp_path, capsys):
    rows = [
        _row(
            "update",
            argument_gb=4.0,
            output_gb=1.0,
            alias_gb=1.0,
            temp_gb=2.0,
            resident_gb=0.5,
            peak_gb=6.5,
            fits=True,
            headroom=0.8,
        )
    ]
    path = tmp_path / "rows.jsonl"
    path.write_text("compiling...\n" + "\n".join(row_json(r) for r in rows) + "\n")
    assert read_rows(path.read_text().splitlines()) == rows
    assert main([str(path), "--topology", "v6e-4", "--hbm", "79.6"]) == 0
    out = capsys.readouterr().out
    assert "| grpo | update | 1 GPU 79.6 GiB | 20.0 / 79.6 |" in out
    assert main([str(path), "--topology", "v5e-4"]) == 2
