"""benchmarks/README.md states the current results: short, one section per script, pictures that exist."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "benchmarks" / "README.md"
MAX_LINES = 400  # current tables only; the history lives in docs/learning_check_log.md


def test_benchmarks_readme_is_short_and_names_every_script():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= MAX_LINES
    headings = "\n".join(line for line in text.splitlines() if line.startswith("## "))
    scripts = sorted(path.name for path in (REPO / "benchmarks").glob("*.py"))
    assert scripts, "no benchmark scripts found"
    unnamed = [name for name in scripts if name not in headings]
    assert not unnamed, f"benchmark scripts without a section heading in benchmarks/README.md: {unnamed}"


def test_benchmarks_readme_pictures_exist():
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", README.read_text(encoding="utf-8"))
    missing = [link for link in links if not (README.parent / link).resolve().is_file()]
    assert not missing, missing
