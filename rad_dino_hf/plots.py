"""Pictures of what the encoder sees."""

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402


def save_figure(figure: plt.Figure, path: str | Path, dpi: int = 110) -> Path:
    """Write `figure` as PNG (creating folders), close it, return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi)
    plt.close(figure)
    return path


def patch_pca_rgb(patch_maps: torch.Tensor, n_components: int = 3) -> np.ndarray:
    """First principal components of patch tokens, fitted jointly over all images, as RGB.

    `patch_maps` `(N, D, h, w)` -> `(N, h, w, 3)` float in [0, 1]; each component is min-max scaled over all images
    so colours are comparable between images (as in the DINOv2 and RAD-DINO figures).
    """
    count, dim, height, width = patch_maps.shape
    tokens = patch_maps.permute(0, 2, 3, 1).reshape(-1, dim).double()
    centered = tokens - tokens.mean(dim=0)
    # Right singular vectors are the principal axes; q > n_components for accuracy of the leading ones.
    _, _, axes = torch.pca_lowrank(centered, q=min(n_components + 4, dim), center=False, niter=6)
    projected = centered @ axes[:, :n_components]
    low, high = projected.min(dim=0).values, projected.max(dim=0).values
    scaled = (projected - low) / (high - low).clamp_min(1e-12)
    return scaled.reshape(count, height, width, n_components).float().numpy()


def save_pca_figure(
    images: Sequence[np.ndarray], pca_rgb: np.ndarray, titles: Sequence[str], path: str | Path, columns: int = 4
) -> Path:
    """Grid of (radiograph, patch-PCA) pairs. `images`: 2-D or HxWx3 arrays; `pca_rgb`: `(N, h, w, 3)`."""
    count = len(images)
    rows = -(-count // columns)
    figure, axes = plt.subplots(rows, 2 * columns, figsize=(4 * columns, 2.1 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for index, (image, rgb, title) in enumerate(zip(images, pca_rgb, titles)):
        row, column = divmod(index, columns)
        axes[row, 2 * column].imshow(image, cmap="gray")
        axes[row, 2 * column].set_title(title, fontsize=7)
        axes[row, 2 * column + 1].imshow(rgb, interpolation="nearest")
        axes[row, 2 * column + 1].set_title("patch PCA", fontsize=7)
    figure.tight_layout()
    return save_figure(figure, path)


def plot_training_curves(metrics_jsonl: str | Path, path: str | Path) -> Path:
    """Loss terms and schedules against iterations, from the trainer's `metrics.jsonl`."""
    import json

    rows = [json.loads(line) for line in Path(metrics_jsonl).read_text(encoding="utf-8").splitlines() if line.strip()]
    steps = [row["step"] for row in rows]
    panels = [
        ("losses", [key for key in rows[0] if key.startswith("loss/")]),
        ("learning rate", ["lr"]),
        ("weight decay", ["wd"]),
        ("teacher momentum", ["momentum"]),
        ("teacher temperature", ["teacher_temp"]),
        ("throughput (images/s)", ["images_per_second"]),
    ]
    figure, axes = plt.subplots(1, len(panels), figsize=(3.3 * len(panels), 3.0))
    for axis, (title, keys) in zip(axes, panels):
        for key in keys:
            axis.plot(steps, [row[key] for row in rows], label=key.removeprefix("loss/"))
        axis.set_title(title, fontsize=9)
        axis.set_xlabel("iteration", fontsize=8)
        axis.tick_params(labelsize=7)
        if len(keys) > 1:
            axis.legend(fontsize=7)
    figure.tight_layout()
    return save_figure(figure, path)


def cls_attention_maps(attentions: torch.Tensor, grid: tuple[int, int]) -> np.ndarray:
    """CLS-to-patch attention of one layer: `(B, heads, 1 + N, 1 + N)` -> `(B, heads, h, w)`, each map summing to 1."""
    maps = attentions[:, :, 0, 1:]
    maps = maps / maps.sum(dim=-1, keepdim=True)
    return maps.unflatten(-1, grid).float().numpy()


def save_attention_figure(image: np.ndarray, maps: np.ndarray, pca_rgb: np.ndarray, path: str | Path) -> Path:
    """Radiograph, its patch PCA and the last layer's CLS attention per head. `maps` `(heads, h, w)`."""
    columns = 2 + len(maps)
    figure, axes = plt.subplots(1, columns, figsize=(2.2 * columns, 2.5))
    axes[0].imshow(image, cmap="gray")
    axes[0].set_title("input (as encoded)", fontsize=7)
    axes[1].imshow(pca_rgb, interpolation="nearest")
    axes[1].set_title("patch PCA", fontsize=7)
    for head, (axis, attention) in enumerate(zip(axes[2:], maps)):
        axis.imshow(attention, cmap="inferno", interpolation="nearest")
        axis.set_title(f"CLS attention, head {head}", fontsize=7)
    for axis in axes:
        axis.axis("off")
    figure.tight_layout()
    return save_figure(figure, path)


def plot_loss_curves(curves: dict[str, Sequence[float]], path: str | Path, title: str = "") -> Path:
    """One panel per training phase (e.g. LM on text, stage 1, stage 2): loss against optimizer step."""
    figure, axes = plt.subplots(1, len(curves), figsize=(3.6 * len(curves), 3.0), squeeze=False)
    for axis, (name, losses) in zip(axes[0], curves.items()):
        axis.plot(np.arange(1, len(losses) + 1), losses)
        axis.set_title(name, fontsize=9)
        axis.set_xlabel("optimizer step", fontsize=8)
        axis.set_ylabel("loss", fontsize=8)
        axis.tick_params(labelsize=7)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return save_figure(figure, path)


def plot_finetune_curves(batch_losses: Sequence[float], val_accuracy: Sequence[float], path: str | Path) -> Path:
    """Training loss of every batch (and its mean per epoch) and validation accuracy after every epoch.

    Every epoch has the same number of batches, `len(batch_losses) / len(val_accuracy)`.
    """
    epochs = np.arange(1, len(val_accuracy) + 1)
    losses = np.asarray(batch_losses, dtype=np.float64)
    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(8.0, 3.0))
    loss_axis.plot(np.arange(1, len(losses) + 1) * len(epochs) / len(losses), losses, lw=0.6, alpha=0.5, label="batch")
    loss_axis.plot(epochs, losses.reshape(len(epochs), -1).mean(axis=1), marker="o", label="epoch mean")
    loss_axis.set_title("training loss", fontsize=9)
    loss_axis.legend(fontsize=7)
    accuracy_axis.plot(epochs, val_accuracy, marker="o")
    accuracy_axis.set_title("validation accuracy", fontsize=9)
    for axis in (loss_axis, accuracy_axis):
        axis.set_xlabel("epoch", fontsize=8)
        axis.tick_params(labelsize=7)
    figure.tight_layout()
    return save_figure(figure, path)
