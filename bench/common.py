"""Shared benchmark helpers: timing, peak memory, and the dated tables of RESULTS.md.

`record_result(benchmark, header, rows, note)` keeps one table per benchmark in RESULTS.md (section
`## <benchmark>`), each row prefixed with its date and machine, newest first; a re-run on the same machine
replaces the rows with the same key instead of appending another section. The parsing and merging are pure
functions over the file's text; `record_result` is the one file write.
"""

from __future__ import annotations

import datetime
import os
import platform
import re
import resource
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "RESULTS.md"
STAMP = ["date", "machine"]
_PIPE = re.compile(r"(?<!\\)\|")


def machine() -> str:
    """'x86_64 CPU x2', plus the accelerators when the benchmark ran jax on one ('x86_64 CPU x16, 1x NVIDIA H200')."""
    out = f"{platform.machine()} CPU x{os.cpu_count()}"
    jax = sys.modules.get("jax")
    if jax is not None and jax.default_backend() != "cpu":
        out += f", {jax.device_count()}x {jax.devices()[0].device_kind}"
    return out


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def timed(fn, *, warmup: int = 1, iters: int = 3) -> float:
    """Median seconds per call after warm-up (fn must block until done)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def _cell(value) -> str:
    return str(value).replace("\n", " ").replace("|", "\\|")


def markdown_table(header: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def parse_table(lines: list[str]) -> tuple[list[str], list[list[str]]]:
    """Markdown table lines -> (header, rows); cells stripped, escaped pipes kept escaped."""
    cells = [[c.strip() for c in _PIPE.split(line.strip())[1:-1]] for line in lines]
    return cells[0], cells[2:]


def split_sections(text: str) -> tuple[str, list[tuple[str, str]]]:
    """RESULTS.md text -> (intro, [(title, body)]) where each body is the raw text after its `## title` line."""
    parts = re.split(r"^## (.*)\n", text, flags=re.M)
    intro, rest = parts[0], parts[1:]
    return intro, [(rest[i].strip(), rest[i + 1]) for i in range(0, len(rest), 2)]


def parse_section(body: str) -> tuple[str, list[str], list[list[str]], str]:
    """A section body -> (text above the table, header, rows, note below the table)."""
    lines = body.strip("\n").splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.lstrip().startswith("|")), len(lines))
    end = start
    while end < len(lines) and lines[end].lstrip().startswith("|"):
        end += 1
    above = "\n".join(lines[:start]).strip()
    note = "\n".join(lines[end:]).strip()
    if start == end:
        return above, [], [], note
    header, rows = parse_table(lines[start:end])
    return above, header, rows, note


def merge_rows(
    old_header: list[str], old_rows: list[list[str]], header: list[str], rows: list[list[str]], key_columns: int
) -> tuple[list[str], list[list[str]]]:
    """New rows (already stamped with date and machine) first, then the old rows that they do not replace.

    An old row is replaced when its machine and its first `key_columns` data columns (matched by column name)
    equal a new row's. Columns only the old table has are kept at the end, blank in the new rows."""
    extra = [h for h in old_header if h not in header]
    out_header = header + extra
    keys = {(r[1], *r[2 : 2 + key_columns]) for r in rows}
    key_names = ["machine", *header[2 : 2 + key_columns]]
    out = [list(r) + [""] * len(extra) for r in rows]
    for r in old_rows:
        by_name = dict(zip(old_header, r))
        if tuple(by_name.get(k, "") for k in key_names) in keys:
            continue
        out.append([by_name.get(h, "") for h in out_header])
    return out_header, out


def render_section(title: str, above: str, header: list[str], rows: list[list], note: str) -> str:
    blocks = [f"## {title}", above, markdown_table(header, rows) if header else "", note]
    return "\n\n".join(b for b in blocks if b) + "\n"


def update_results(
    text: str,
    benchmark: str,
    header: list[str],
    rows: list[list],
    *,
    note: str = "",
    key_columns: int = 1,
    date: str,
    machine: str,
) -> str:
    """RESULTS.md text with `rows` recorded under `## benchmark`; every other section kept as it is.

    A missing section is created first after the intro. `note` replaces the paragraph below the table (an
    empty note keeps the old one); text above the table is written by hand and kept."""
    if key_columns < 0 or key_columns > len(header):
        raise ValueError(f"key_columns={key_columns} must be between 0 and the {len(header)} columns")
    stamped = [[date, machine, *(str(c) for c in r)] for r in rows]
    intro, sections = split_sections(text)
    titles = [t for t, _ in sections]
    old_body = sections[titles.index(benchmark)][1] if benchmark in titles else ""
    above, old_header, old_rows, old_note = parse_section(old_body)
    old_rows = [[c.replace("\\|", "|") for c in r] for r in old_rows]
    new_header, merged = merge_rows(old_header, old_rows, STAMP + list(header), stamped, key_columns)
    section = render_section(benchmark, above, new_header, merged, note or old_note)
    if benchmark in titles:
        sections[titles.index(benchmark)] = (benchmark, None)
    else:
        sections.insert(0, (benchmark, None))
    intro = intro.rstrip("\n") + "\n\n" if intro.strip() else ""
    bodies = [section if body is None else f"## {t}\n{body}" for t, body in sections]
    bodies = [b.rstrip("\n") + "\n" for b in bodies]
    return intro + "\n".join(bodies)


def record_result(
    benchmark: str, header: list[str], rows: list[list], note: str = "", key_columns: int = 1, path: Path = RESULTS
) -> None:
    """Record a benchmark's rows in RESULTS.md with today's date and this machine (see update_results)."""
    text = path.read_text() if path.exists() else ""
    path.write_text(
        update_results(
            text,
            benchmark,
            header,
            rows,
            note=note,
            key_columns=key_columns,
            date=datetime.date.today().isoformat(),
            machine=machine(),
        )
    )
    print(f"recorded {len(rows)} rows under '## {benchmark}' in {path}")
