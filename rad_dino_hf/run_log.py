"""Training logs as JSON lines: one record (a flat dict of numbers) per line, appended while a run goes.

Pretraining writes `metrics.jsonl` (one record per logged iteration, keyed by `step`); the supervised loops write
their `loss_curve.jsonl` (one record per update and per epoch, tagged with the phase). Plots, the learning check and
the GPU check read them back. Only the standard library here, so a script that just reads logs imports no torch.
"""

import json
import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)

METRICS_FILENAME = "metrics.jsonl"  # pretraining's log, in the run's output folder


def append_record(path: str | Path, record: dict) -> None:
    """Append `record` as one line; the line is written whole in one call, so a reader sees it entire or not at all
    except when the process is killed mid-write (`read_records` skips such a line)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


def _parse(path: Path) -> tuple[list[dict], int]:
    """The records of a log in order, and how many non-blank lines were not JSON."""
    records, unreadable = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            unreadable += 1
    return records, unreadable


def read_records(path: str | Path) -> list[dict]:
    """Every record of a log, in order. A line that is not JSON (the tail of a run killed while writing it) is
    skipped with a warning rather than losing the rest of the log."""
    records, unreadable = _parse(Path(path))
    if unreadable:
        logger.warning("%s: skipped %d unreadable line(s), as a run killed while writing leaves", path, unreadable)
    return records


def keep_records_until(path: str | Path, step: int) -> int:
    """Drop the records logged after iteration `step` (and unreadable lines); returns how many were dropped.

    A run that crashed after its last checkpoint logged iterations that the resumed run repeats: without this, the
    log would hold them twice and its curves would run backwards. The file is replaced atomically."""
    path = Path(path)
    if not path.exists():
        return 0
    records, unreadable = _parse(path)
    kept = [record for record in records if record["step"] <= step]
    dropped = len(records) - len(kept) + unreadable
    if dropped:
        partial = path.with_name(path.name + ".tmp")
        partial.write_text("".join(json.dumps(record) + "\n" for record in kept), encoding="utf-8")
        os.replace(partial, path)
    return dropped
