"""The repository's shape: imports flow one way (entry points -> machinery -> Hub files), everything imports through
the installed project (no `sys.path` edits), and the README's "where things live" table names every machinery module
and nothing that is not there."""

import ast
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HUB_FILES = ["configuration_rad_dino.py", "modeling_rad_dino.py", "image_processing_rad_dino.py"]
ENTRY_POINTS = {"train_pretrain", "train_downstream"}  # the scripts at the root; their code is in rad_dino_hf/cli/
PACKAGE = "rad_dino_hf"
CLI = f"{PACKAGE}.cli"  # the command lines (console scripts), above the machinery


def imported_module_paths(path: Path) -> set[str]:
    """Full dotted names of every module `path` imports (at any depth of the file, including inside functions)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def imported_modules(path: Path) -> set[str]:
    """Top-level names of every module `path` imports."""
    return {name.split(".")[0] for name in imported_module_paths(path)}


def machinery_modules() -> list[Path]:
    """The package's files below the command lines (everything but rad_dino_hf/cli/)."""
    return [path for path in sorted((REPO / PACKAGE).rglob("*.py")) if "cli" not in path.relative_to(REPO).parts]


def test_hub_files_import_only_each_other_and_libraries():
    # The Hub copies these files alone for trust_remote_code: an import of the machinery would break remote loading.
    for name in HUB_FILES:
        imported = imported_modules(REPO / name)
        assert PACKAGE not in imported and not imported & ENTRY_POINTS, (name, imported)


def test_machinery_never_imports_the_entry_points():
    for path in machinery_modules():
        imported = imported_module_paths(path)
        assert not imported_modules(path) & ENTRY_POINTS, path
        assert not [name for name in imported if name == CLI or name.startswith(f"{CLI}.")], path


def test_root_scripts_only_call_the_command_lines():
    # `python train_pretrain.py` / `accelerate launch train_pretrain.py` run the same code as the console scripts.
    for name in ENTRY_POINTS:
        script = REPO / f"{name}.py"
        assert imported_module_paths(script) == {f"{CLI}.{name.removeprefix('train_')}"}, script
        assert len(script.read_text(encoding="utf-8").splitlines()) < 15, script


def test_downstream_entry_point_only_dispatches():
    assert len((REPO / PACKAGE / "cli" / "downstream.py").read_text(encoding="utf-8").splitlines()) < 200


def where_things_live() -> list[str]:
    """The paths (in backticks, first column: one or several a row) of the README's "Where things live" table."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## Where things live", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1] for line in section.splitlines() if line.startswith("| `")]
    return [path for row in rows for path in re.findall(r"`([^`]+)`", row)]


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
    for path in machinery_modules():
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
    # Nor may a module of the package share its name with a folder or module of the repository root (metrics.py and
    # metrics/ once did). Documents may: model_card.md is the card that model_card.py writes for the ViT-B recipe.
    package_level = {path.stem for path in (REPO / PACKAGE).iterdir() if path.name != "__init__.py"}
    top_level = {
        path.stem
        for path in REPO.iterdir()
        if not path.name.startswith(".") and (path.is_dir() or path.suffix == ".py")
    } - {PACKAGE}
    assert not package_level & top_level, package_level & top_level


# `sys.path.insert(...)`, `sys.path.append(...)`, `sys.path[:0] = ...`, `sys.path = ...`, `sys.path += ...`,
# `site.addsitedir(...)`, pytest's `pythonpath = .` and a PYTHONPATH set in a shell or an environment dict.
PATH_EDIT = re.compile(
    r"sys\.path\s*(\.\s*(insert|append|extend)\s*\(|(\[[^\]]*\])?\s*\+?=(?!=))"
    r"|site\.addsitedir\s*\("
    r"|\bpythonpath\b[\"']?\s*(\]\s*)?(:|=(?!=))",
    re.IGNORECASE,
)
TEXT_SUFFIXES = {".py", ".ini", ".toml", ".cfg", ".txt", ".sh", ".yaml", ".yml", ".md", ""}


def test_path_edit_pattern_catches_each_form():
    edits = ["sys.path.insert(0, root)", "sys.path.append(x)", "sys.path[:0] = [x]", "sys.path += [x]",
             "sys.path = [x]", "site.addsitedir(x)", "pythonpath = .", "PYTHONPATH=. python x.py",
             'env={"PYTHONPATH": "."}', 'os.environ["PYTHONPATH"] = root']  # fmt: skip
    assert [edit for edit in edits if not PATH_EDIT.search(edit)] == []
    reads = ["print(sys.path)", "x in sys.path", "if sys.path == y:", 'if key != "PYTHONPATH"}', "sys.path[0] == x"]
    assert [text for text in reads if PATH_EDIT.search(text)] == []


def test_nothing_edits_the_import_path():
    # Everything imports through the installed project (`pip install -e .`): a path edit hides a packaging fault.
    try:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the tracked files are unknown")
    tracked = [REPO / name for name in listed.stdout.split("\0") if name]
    texts = [path for path in tracked if path.suffix in TEXT_SUFFIXES and path.is_file()]
    offenders = [
        f"{path.relative_to(REPO)}: {match.group(0)}"
        for path in texts
        if path != Path(__file__).resolve()
        for match in PATH_EDIT.finditer(path.read_text(encoding="utf-8"))
    ]
    assert not offenders, offenders


def test_readme_is_short_and_its_pictures_exist():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 300
    pictures = re.findall(r"\]\((docs/[^)]+)\)|src=\"(docs/[^\"]+)\"", text)
    paths = [path for pair in pictures for path in pair if path]
    assert len(paths) >= 8 and not [path for path in paths if not (REPO / path).is_file()], paths
