"""Plant known bugs one at a time and check that the test suite catches each (not collected by pytest).

    python tests/mutants.py              # the committed tree (HEAD)
    python tests/mutants.py --worktree   # the tracked files as they are on disk now

The repository is copied to a temporary folder (so work in progress here is never touched); for each row of
MUTANTS the old text is replaced by the new one in that copy (it must occur exactly once: a refactor that moves
the code makes this script fail loudly, update the row then), the listed tests run with `-x -q`, and the file is
restored. A bug is caught when pytest fails. Prints "planted bug | file | caught by" and exits 1 if any bug
survives or a baseline test fails.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

# (planted bug, file, old text, new text, tests)
MUTANTS = [
    (
        "teacher EMA momentum swapped",
        "rad_dino_hf/ssl_model.py",
        "torch._foreach_mul_(teacher_params, momentum)\n"
        "    torch._foreach_add_(teacher_params, student_params, alpha=1.0 - momentum)",
        "torch._foreach_mul_(teacher_params, 1.0 - momentum)\n"
        "    torch._foreach_add_(teacher_params, student_params, alpha=momentum)",
        ["tests/test_ssl_step.py"],
    ),
    (
        "teacher given the iBOT-masked global crops",
        "rad_dino_hf/ssl_model.py",
        "outputs = teacher(global_crops, patch_selection=masks)",
        "outputs = teacher(global_crops, masks=masks, patch_selection=masks)",
        ["tests/test_ssl_step.py"],
    ),
    (
        "student global crops not masked",
        "rad_dino_hf/ssl_model.py",
        "masks=masks, patch_selection=masks",
        "masks=None, patch_selection=masks",
        ["tests/test_ssl_step.py"],
    ),
    (
        "DINO center: batch sum not divided by world size",
        "rad_dino_hf/losses/dino_clstoken_loss.py",
        "batch_sum / (teacher_logits.shape[0] * world_size())",
        "batch_sum / teacher_logits.shape[0]",
        ["tests/test_ssl_step.py", "tests/test_losses.py"],
    ),
    (
        "to_uint8 rounds with floor instead of rint",
        "image_processing_rad_dino.py",
        "np.clip(np.rint(scaled), 0, 255)",
        "np.clip(np.floor(scaled), 0, 255)",
        ["tests/test_image_processing.py"],
    ),
    (
        "pretraining augmentation mean 0.5307 -> 0.485 (recipe)",
        "rad_dino_hf/recipe.py",
        "mean: float = RAD_DINO_IMAGE_MEAN[0]",
        "mean: float = 0.485",
        ["tests/test_augment.py"],
    ),
    (
        "pretraining augmentation mean 0.5307 -> 0.485 (augment default)",
        "rad_dino_hf/augment.py",
        "RAD_DINO_MEAN: float = RAD_DINO_IMAGE_MEAN[0]",
        "RAD_DINO_MEAN: float = 0.485",
        ["tests/test_augment.py"],
    ),
    (
        "probe CV folds ignore patients",
        "rad_dino_hf/tables.py",
        "groups=patients))",
        "groups=np.arange(len(patients))))",
        ["tests/test_probe.py"],
    ),
    (
        "report generator saved with unload() (LoRA discarded)",
        "rad_dino_hf/report/pipeline.py",
        "generator = peft_model.merge_and_unload()",
        "generator = peft_model.unload()",
        ["tests/test_commands.py::test_report_command_saves_its_base_with_the_trained_adapter_merged"],
    ),
    (
        "8-bit images min-max stretched",
        "image_processing_rad_dino.py",
        "        if array.dtype != np.uint8:\n            array = to_uint8(array)\n",
        "        array = to_uint8(array)\n",
        ["tests/test_image_processing.py"],
    ),
    (
        "resume keeps the log records of the crashed run's last iterations",
        "rad_dino_hf/trainer.py",
        "dropped = keep_records_until(self.output_dir / METRICS_FILENAME, self.state.step)",
        "dropped = 0",
        ["tests/test_pretrain.py::test_sigkill_while_checkpointing_resumes_from_previous"],
    ),
    (
        "the collapse monitor's patience restarts on resume",
        "rad_dino_hf/checkpoint.py",
        "return dict(vars(self))",
        'return {k: v for k, v in vars(self).items() if k not in ("low_information_iterations", "collapse_warned")}',
        ["tests/test_pretrain.py::test_collapse_patience_counts_across_a_resume"],
    ),
]

REPO_ROOT = Path(__file__).resolve().parents[1]


def copy_repository(destination: Path, worktree: bool) -> None:
    """The tracked files of HEAD (or of the working tree) into `destination`; no .git, no ignored files."""
    if worktree:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, check=True).stdout
        for name in filter(None, listed.decode().split("\0")):
            source = REPO_ROOT / name
            if source.is_file():
                (destination / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, destination / name)
    else:
        archive = subprocess.run(["git", "archive", "HEAD"], cwd=REPO_ROOT, capture_output=True, check=True).stdout
        with tarfile.open(fileobj=BytesIO(archive)) as tar:
            tar.extractall(destination, filter="data")


def run_pytest(root: Path, tests: list[str]) -> tuple[bool, str]:
    """(passed, first failing test id or the output's tail)."""
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"}
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    result = subprocess.run(command, cwd=root, env=environment, capture_output=True, text=True)
    if result.returncode == 0:
        return True, ""
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", result.stdout, flags=re.MULTILINE)
    return False, failed[0] if failed else result.stdout[-500:] + result.stderr[-500:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worktree", action="store_true", help="copy the tracked files from disk instead of HEAD")
    parser.add_argument("-k", help="only the mutants whose description contains this text")
    args = parser.parse_args()
    mutants = [row for row in MUTANTS if not args.k or args.k in row[0]]
    with tempfile.TemporaryDirectory(prefix="rad-dino-mutants-") as folder:
        root = Path(folder)
        copy_repository(root, args.worktree)
        for description, name, old, new, _ in mutants:  # every pattern first: fail before any long run
            count = (root / name).read_text().count(old) if (root / name).is_file() else 0
            if count != 1:
                raise SystemExit(f"{description}: expected the text once in {name}, found it {count} times: {old!r}")
        baseline_tests = sorted({test for row in mutants for test in row[4]})
        passed, detail = run_pytest(root, baseline_tests)
        if not passed:
            raise SystemExit(f"baseline (no bug planted) fails, fix it first: {detail}")
        rows, survivors = [], 0
        for description, name, old, new, tests in mutants:
            path = root / name
            original = path.read_text()
            try:
                path.write_text(original.replace(old, new))
                passed, caught_by = run_pytest(root, tests)
            finally:
                path.write_text(original)
            survivors += passed
            rows.append((description, name, "NOT CAUGHT" if passed else caught_by))
            print(f"{description}: {rows[-1][2]}", file=sys.stderr, flush=True)
    print("| planted bug | file | caught by |\n|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
