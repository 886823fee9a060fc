"""The JSON-lines training log: round trip, a line cut by a kill, and trimming to a resumed iteration."""

import logging

from rad_dino_hf.run_log import append_record, keep_records_until, read_records

RECORDS = [{"step": step, "loss/dino": 5.5 - step / 7, "lr": 1e-4 * step} for step in (10, 20, 30, 40)]


def write(path, records, tail=""):
    for record in records:
        append_record(path, record)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(tail)


def test_records_round_trip_exactly(tmp_path):
    path = tmp_path / "run" / "metrics.jsonl"  # the folder is created on the first record
    write(path, RECORDS)
    assert read_records(path) == RECORDS
    assert len(path.read_text().splitlines()) == len(RECORDS)


def test_a_line_cut_by_a_kill_is_skipped_with_a_warning(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    write(path, RECORDS[:2], tail='{"step": 30, "loss/di')
    with caplog.at_level(logging.WARNING, logger="rad_dino_hf.run_log"):
        assert read_records(path) == RECORDS[:2]
    assert "skipped 1 unreadable line" in caplog.text


def test_resuming_drops_what_the_crashed_run_logged_after_its_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    write(path, RECORDS, tail='{"step": 50, "lo')
    assert keep_records_until(path, 20) == 3  # steps 30 and 40, and the cut line
    assert read_records(path) == RECORDS[:2]
    append_record(path, RECORDS[2])  # the resumed run logs iteration 30 again: once in the file
    assert [record["step"] for record in read_records(path)] == [10, 20, 30]
    assert not list(tmp_path.glob("*.tmp"))


def test_nothing_to_drop_leaves_the_file_alone(tmp_path):
    path = tmp_path / "metrics.jsonl"
    write(path, RECORDS)
    before = path.read_bytes()
    assert keep_records_until(path, 40) == 0
    assert path.read_bytes() == before
    assert keep_records_until(tmp_path / "absent.jsonl", 40) == 0  # a fresh run has no log yet
