"""RESULTS.md keeps one dated table per benchmark: a re-run replaces its rows, newest first, nothing else moves."""

from bench.common import parse_section, record_result, split_sections, update_results

INTRO = "# Results\n\nHow rows get here.\n"
OTHER = "## Other benchmark\n\nWritten by hand.\n\n| date | machine | x |\n|---|---|---|\n| 2026-01-01 | m | 1 |\n"


def _rows(text: str, title: str) -> tuple[list[str], list[list[str]], str, str]:
    body = dict(split_sections(text)[1])[title]
    above, header, rows, note = parse_section(body)
    return header, rows, above, note


def _record(text, rows, *, date="2026-12-01", machine="cpu x2", note="", key_columns=1):
    return update_results(
        text,
        "Speed",
        ["config", "batch", "tok/s"],
        rows,
        note=note,
        key_columns=key_columns,
        date=date,
        machine=machine,
    )


def test_first_write_creates_the_section_after_the_intro():
    text = _record(INTRO + "\n" + OTHER, [["tiny", 2, "9,390"]], note="Median of 3.")
    assert text.startswith(INTRO + "\n## Speed\n")
    assert text.index("## Speed") < text.index("## Other benchmark")
    header, rows, _, note = _rows(text, "Speed")
    assert header == ["date", "machine", "config", "batch", "tok/s"]
    assert rows == [["2026-12-01", "cpu x2", "tiny", "2", "9,390"]]
    assert note == "Median of 3."


def test_empty_file_gets_a_section():
    header, rows, _, _ = _rows(_record("", [["tiny", 1, "5"]]), "Speed")
    assert header[:2] == ["date", "machine"] and rows == [["2026-12-01", "cpu x2", "tiny", "1", "5"]]


def test_rerun_replaces_rows_with_the_same_key_and_machine_newest_first():
    text = _record(INTRO, [["tiny", 1, "10"], ["small", 1, "3"]], date="2026-11-28")
    text = _record(text, [["tiny", 8, "99"]], date="2026-12-02", machine="gpu")  # other machine: kept
    text = _record(text, [["tiny", 2, "12"]], date="2026-12-03")  # replaces tiny on cpu x2
    _, rows, _, _ = _rows(text, "Speed")
    assert rows == [
        ["2026-12-03", "cpu x2", "tiny", "2", "12"],
        ["2026-12-02", "gpu", "tiny", "8", "99"],
        ["2026-11-28", "cpu x2", "small", "1", "3"],
    ]


def test_key_columns_widen_the_key():
    text = _record(INTRO, [["tiny", 1, "10"], ["tiny", 8, "50"]], key_columns=2)
    text = _record(text, [["tiny", 8, "60"]], date="2026-12-03", key_columns=2)
    _, rows, _, _ = _rows(text, "Speed")
    assert [r[2:] for r in rows] == [["tiny", "8", "60"], ["tiny", "1", "10"]]


def test_other_sections_untouched_and_hand_text_above_the_table_kept():
    base = (
        INTRO + "\n" + "## Speed\n\nRead this first.\n\n| date | machine | config | batch | tok/s |\n"
        "|---|---|---|---|---|\n| 2026-11-28 | cpu x2 | tiny | 1 | 10 |\n\nOld note.\n\n" + OTHER
    )
    text = _record(base, [["tiny", 1, "11"]], note="New note.")
    assert text.endswith(OTHER)
    assert text.startswith(INTRO)
    _, rows, above, note = _rows(text, "Speed")
    assert above == "Read this first." and note == "New note."
    assert rows == [["2026-12-01", "cpu x2", "tiny", "1", "11"]]
    assert "Old note." not in text
    assert "Old note." in _record(base, [["tiny", 1, "11"]])  # no note given: kept


def test_new_columns_and_pipes_in_cells():
    base = _record(INTRO, [["tiny", 1, "10"]])
    text = update_results(
        base,
        "Speed",
        ["config", "batch", "tok/s", "agreement"],
        [["small", 1, "3", "max |d| 1e-7"]],
        date="2026-12-02",
        machine="cpu x2",
    )
    header, rows, _, _ = _rows(text, "Speed")
    assert header == ["date", "machine", "config", "batch", "tok/s", "agreement"]
    assert rows[0][-1] == "max \\|d\\| 1e-7" and rows[1] == ["2026-12-01", "cpu x2", "tiny", "1", "10", ""]
    assert (
        update_results(
            text,
            "Speed",
            ["config", "batch", "tok/s", "agreement"],
            [["small", 1, "3", "max |d| 1e-7"]],
            date="2026-12-02",
            machine="cpu x2",
        )
        == text
    )  # stable on re-run


def test_record_result_writes_the_file(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text(INTRO)
    record_result("Speed", ["config", "tok/s"], [["tiny", "10"]], note="n", path=path)
    record_result("Speed", ["config", "tok/s"], [["tiny", "12"]], path=path)
    _, rows, _, note = _rows(path.read_text(), "Speed")
    assert len(rows) == 1 and rows[0][2:] == ["tiny", "12"] and note == "n"
