"""The repository's shape: imports flow one way (entry points -> machinery -> Hub files) and the README's "where
things live" table names every machinery module and nothing that is not there."""

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HUB_FILES = ["configuration_rad_dino.py", "modeling_rad_dino.py", "image_processing_rad_dino.py"]
ENTRY_POINTS = {"train_pretrain", "train_downstream"}
PACKAGE = "rad_dino_hf"


def imported_modules(path: Path) -> set[str]:
    """Top-level names of every module `path` imports (at any depth of the file, including inside functions)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_hub_files_import_only_each_other_and_libraries():
    # The Hub copies these files alone for trust_remote_code: an import of the machinery would break remote loading.
    for name in HUB_FILES:
        imported = imported_modules(REPO / name)
        assert PACKAGE not in imported and not imported & ENTRY_POINTS, (name, imported)


def test_machinery_never_imports_the_entry_points():
    for path in sorted((REPO / PACKAGE).rglob("*.py")):
        assert not imported_modules(path) & ENTRY_POINTS, path


def test_downstream_entry_point_only_dispatches():
    assert len((REPO / "train_downstream.py").read_text(encoding="utf-8").splitlines()) < 200


def where_things_live() -> list[str]:
    """The paths (first column, in backticks) of the README's "Where things live" table."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## Where things live", 1)[1].split("\n## ", 1)[0]
    return [match for line in section.splitlines() for match in re.findall(r"^\| `([^`]+)`", line)]


def test_readme_table_matches_the_tree():
    listed = where_things_live()
    missing = [path for path in listed if not (REPO / path.rstrip("/")).exists()]
    assert not missing, f"README names paths that do not exist: {missing}"
    modules = [
        path.relative_to(REPO).as_posix()
        for path in sorted((REPO / PACKAGE).rglob("*.py"))
        if path.name != "__init__.py"
    ]
    # A module is covered when the table names it or a subfolder holding it (the package itself is too coarse).
    entries = [entry for entry in listed if entry.rstrip("/") != PACKAGE]
    uncovered = [module for module in modules if not any(module.startswith(entry) for entry in entries)]
    assert not uncovered, f"README's table does not say where these live: {uncovered}"


def test_machinery_never_imports_the_command_lines():
    # rad_dino_hf/tasks/ is the downstream command line; the machinery below it must be usable without it.
    for path in sorted((REPO / PACKAGE).rglob("*.py")):
        if "tasks" in path.relative_to(REPO / PACKAGE).parts:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
        imported += [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module]
        assert not [name for name in imported if name.startswith(f"{PACKAGE}.tasks")], path


def test_one_meaning_per_module_name():
    # A task (command) module and a machinery module or folder of the same name would mean two things.
    tasks = {path.stem for path in (REPO / PACKAGE / "tasks").glob("*.py") if path.stem != "__init__"}
    machinery = {
        path.stem
        for path in (REPO / PACKAGE).rglob("*")
        if "tasks" not in path.relative_to(REPO / PACKAGE).parts
        and path.name != "__init__.py"
        and (path.suffix == ".py" or path.is_dir())
    }
    assert not tasks & machinery, tasks & machinery
    # Nor may a module of the package share its name with a folder or file of the repository root (metrics.py and
    # metrics/ once did).
    package_level = {path.stem for path in (REPO / PACKAGE).iterdir() if path.name != "__init__.py"}
    top_level = {path.stem for path in REPO.iterdir() if not path.name.startswith(".")} - {PACKAGE}
    assert not package_level & top_level, package_level & top_level
