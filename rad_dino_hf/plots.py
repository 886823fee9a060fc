"""Figures as PNG files: what the encoder sees (patch PCA, CLS attention), training curves, paired differences
between runs, a value against a size (log2 axis), and downstream evaluation (ROC curves, confusion matrices,
regression scatter plots, segmentation overlays)."""

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402
from sklearn.metrics import confusion_matrix as sklearn_confusion_matrix  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from rad_dino_hf.metrics import auroc, dice_iou_from_counts, segmentation_counts  # noqa: E402
from rad_dino_hf.run_log import read_records  # noqa: E402

IGNORE_COLOUR = (1.0, 0.0, 1.0)  # magenta: not used by the class palette


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
    """Loss terms, teacher-target information (collapse monitor) and schedules against iterations, from the
    trainer's `metrics.jsonl`."""
    rows = read_records(metrics_jsonl)
    steps = [row["step"] for row in rows]
    panels = [
        ("losses", [key for key in rows[0] if key.startswith("loss/")]),
        ("image-target MI (nats)", [key for key in rows[0] if key.startswith("mi/")]),
        ("learning rate", ["lr"]),
        ("weight decay", ["wd"]),
        ("teacher momentum", ["momentum"]),
        ("teacher temperature", ["teacher_temp"]),
        ("throughput (images/s)", ["images_per_second"]),
    ]
    figure, axes = plt.subplots(1, len(panels), figsize=(3.3 * len(panels), 3.0))
    for axis, (title, keys) in zip(axes, panels):
        for key in keys:
            axis.plot(steps, [row[key] for row in rows], label=key.split("/")[-1])
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


def save_contact_sheet(rows: Sequence[Sequence[tuple[np.ndarray | None, str]]], path: str | Path) -> Path:
    """One row per query: the query's image, then its neighbours', each `(grey (H, W) image or None, title)`."""
    columns = max(len(row) for row in rows)
    figure, axes = plt.subplots(len(rows), columns, figsize=(1.9 * columns, 2.1 * len(rows)), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for row_axes, row in zip(axes, rows):
        for axis, (image, title) in zip(row_axes, row):
            if image is not None:
                axis.imshow(image, cmap="gray", vmin=0, vmax=1)
            axis.set_title(title, fontsize=6)
    figure.tight_layout()
    return save_figure(figure, path)


def plot_loss_curves(
    curves: dict[str, Sequence[float]],
    path: str | Path,
    title: str = "",
    epoch_values: dict[str, Sequence[float]] | None = None,
) -> Path:
    """One panel per training phase (e.g. LM on text, stage 1, stage 2): loss against optimizer update; then one
    panel per `epoch_values` series (e.g. validation accuracy after every epoch) against the epoch."""
    panels = [(name, values, "optimizer update", "loss") for name, values in curves.items()]
    panels += [(name, values, "epoch", "") for name, values in (epoch_values or {}).items()]
    figure, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.0), squeeze=False)
    for axis, (name, values, x_label, y_label) in zip(axes[0], panels):
        axis.plot(np.arange(1, len(values) + 1), values, marker="o" if x_label == "epoch" else None)
        axis.set_title(name, fontsize=9)
        axis.set_xlabel(x_label, fontsize=8)
        axis.set_ylabel(y_label, fontsize=8)
        axis.tick_params(labelsize=7)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return save_figure(figure, path)


def group_handles(colours, groups: Sequence[int], group_name: str) -> list[plt.Line2D]:
    """Legend entries for dots coloured by group: `<group_name> <group>` in the group's colour."""
    return [plt.Line2D([], [], marker="o", linestyle="", color=colours(g), label=f"{group_name} {g}") for g in groups]


def plot_paired_differences(
    labels: Sequence[str],
    panels: Sequence[tuple[str, Sequence[Sequence[tuple[float, int]]], Sequence[tuple[float, float, float] | None]]],
    shaded_row: int | None,
    group_name: str,
    shaded_name: str,
    x_label: str,
    path: str | Path,
) -> Path:
    """Paired differences, one row per `labels` entry (top to bottom) and one panel per `(title, points, means)`:
    `points[row]` are `(difference, group)` dots coloured by group, `means[row]` a `(mean, low, high)` bar (nan
    bounds: the mean alone; None: nothing). The range of `shaded_row`'s dots is shaded in its panel, as the scale
    of noise the other rows are read against. The x range follows the dots, so that wide intervals do not squash
    them."""
    heights = [1 + 0.4 * label.count("\n") for label in labels]  # rows of wrapped labels a little taller
    # Top to bottom: the first label gets the highest position.
    tops = np.cumsum(heights[::-1])[::-1]
    positions = [top - (h + 1) / 2 for top, h in zip(tops, heights)]
    figure, axes = plt.subplots(
        1, len(panels), figsize=(4.2 * len(panels) + 3.5, 0.36 * sum(heights) + 1.8), sharey=True, squeeze=False
    )
    colours = plt.get_cmap("tab10")
    groups = sorted({group for _, points, _ in panels for row in points for _, group in row})
    for axis, (title, points, means) in zip(axes[0], panels):
        if shaded_row is not None and points[shaded_row]:
            values = [value for value, _ in points[shaded_row]]
            axis.axvspan(min(values), max(values), color="0.9", zorder=0)
        axis.axvline(0, color="0.4", linewidth=0.8)
        for y, row, bar in zip(positions, points, means):
            for value, group in row:
                axis.plot(value, y, "o", color=colours(group), alpha=0.75, markersize=5)
            if bar is None:
                continue
            mean, low, high = bar
            if np.isnan(low):
                axis.plot(mean, y, "|", color="black", markersize=12)
            else:
                axis.errorbar(
                    mean, y, xerr=[[mean - low], [high - mean]], fmt="|", color="black", markersize=12, capsize=3
                )
        shown = [value for row in points for value, _ in row]
        margin = 0.15 * (max(shown) - min(shown))
        axis.set_xlim(min(shown) - margin, max(shown) + margin)
        axis.set_title(title, fontsize=9)
        axis.set_xlabel(x_label, fontsize=8)
        axis.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(positions)
    axes[0][0].set_yticklabels(labels, fontsize=8)
    axes[0][0].set_ylim(-0.7, sum(heights) - 0.3)
    handles = group_handles(colours, groups, group_name)
    handles.append(
        plt.Line2D([], [], marker="|", linestyle="", color="black", markersize=12, label="mean (95 % t interval)")
    )
    if shaded_row is not None:
        handles.append(Patch(color="0.9", label=shaded_name))
    figure.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    figure.tight_layout(rect=(0, 0.05, 1, 1))
    return save_figure(figure, path)


def plot_against_size(
    panels: Sequence[tuple[str, Sequence[tuple[float, float, int, bool]], tuple[float, str] | None]],
    fits: Sequence[tuple[float, float] | None],
    x_label: str,
    group_name: str,
    hollow_name: str,
    path: str | Path,
) -> Path:
    """A value against a size on a log2 axis, one panel per `(title, points, reference)`: `points` are `(size, value,
    group, hollow)` dots coloured by group (hollow ones are the kind `hollow_name` names), `reference` a `(value,
    label)` horizontal line; `fits[i]` a `(slope per doubling, intercept at size 1)` line drawn over panel i."""
    figure, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.8), squeeze=False)
    colours = plt.get_cmap("tab10")
    groups = sorted({group for _, points, _ in panels for _, _, group, _ in points})
    for axis, (title, points, reference), fit in zip(axes[0], panels, fits):
        for size, value, group, hollow in points:
            face = "none" if hollow else colours(group)
            axis.plot(size, value, "o", markeredgecolor=colours(group), markerfacecolor=face, alpha=0.8, markersize=6)
        if reference is not None:
            axis.axhline(reference[0], color="0.3", linestyle="--", linewidth=0.9, label=reference[1])
            axis.legend(fontsize=7, loc="lower right", frameon=False)
        ends = np.array([min(size for size, _, _, _ in points), max(size for size, _, _, _ in points)])
        if fit is not None:
            axis.plot(ends, fit[1] + fit[0] * np.log2(ends), color="black", linewidth=1, alpha=0.7)
        axis.set_xscale("log", base=2)
        axis.set_xlim(ends[0] / 1.25, ends[1] * 1.25)  # wide enough for a power-of-2 tick on either side
        axis.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}"))
        axis.set_title(title, fontsize=9)
        axis.set_xlabel(x_label, fontsize=8)
        axis.tick_params(labelsize=7)
        axis.grid(alpha=0.3)
    handles = group_handles(colours, groups, group_name)
    handles.append(plt.Line2D([], [], marker="o", linestyle="", markerfacecolor="none", color="0.3", label=hollow_name))
    if any(fit is not None for fit in fits):  # no legend entry for a line drawn nowhere
        handles.append(plt.Line2D([], [], color="black", linewidth=1, alpha=0.7, label="least squares in log2(size)"))
    figure.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    figure.tight_layout(rect=(0, 0.08, 1, 1))
    return save_figure(figure, path)


def plot_roc_curves(
    labels: np.ndarray,
    scores: np.ndarray,
    path: str | Path,
    class_names: Sequence[str] | None = None,
    multilabel: bool = False,
    title: str = "ROC curves",
) -> Path:
    """One-vs-rest (or per-label) ROC curve of each class and their macro average, in one figure.

    `labels` `(N,)` int or `(N, C)` {0, 1} with `multilabel=True`; `scores` `(N, C)`. The macro curve is the mean of
    the per-class TPRs interpolated on a common FPR grid; its legend shows the macro AUROC (mean of per-class AUROCs,
    as reported by `rad_dino_hf.metrics`), drawn when there are several curves. Classes without both positives and
    negatives are left out.
    """
    labels, scores = np.asarray(labels), np.asarray(scores, np.float64)
    num_classes = scores.shape[1]
    targets = labels if multilabel else (labels[:, None] == np.arange(num_classes)).astype(int)
    names = [str(c) for c in range(num_classes)] if class_names is None else list(class_names)
    grid = np.linspace(0.0, 1.0, 201)
    curves, areas = [], []
    figure, axis = plt.subplots(figsize=(5.2, 5.0))
    for c in range(num_classes):
        area = auroc(targets[:, c], scores[:, c])
        if not np.isfinite(area):
            continue
        fpr, tpr, _ = roc_curve(targets[:, c], scores[:, c])
        axis.plot(fpr, tpr, lw=1.2, label=f"{names[c]} (AUROC {area:.3f})")
        curves.append(np.interp(grid, fpr, tpr))
        areas.append(area)
    if len(curves) > 1:  # one curve (a binary target) is its own average
        macro = np.mean(curves, axis=0)
        macro[0] = 0.0
        axis.plot(grid, macro, color="black", lw=2.2, label=f"macro (AUROC {np.mean(areas):.3f})")
    axis.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1.01)
    axis.set_xlabel("false positive rate")
    axis.set_ylabel("true positive rate")
    axis.set_title(title, fontsize=10)
    axis.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    return save_figure(figure, path)


def plot_confusion_matrix(
    labels: np.ndarray,
    predictions: np.ndarray,
    path: str | Path,
    class_names: Sequence[str] | None = None,
    num_classes: int | None = None,
    title: str = "Confusion matrix",
) -> Path:
    """Confusion matrix: rows reference, columns prediction; cells show counts, colours are row-normalised (recall).

    `labels`, `predictions`: `(N,)` int class indices (for scores use `scores.argmax(axis=1)`).
    """
    labels, predictions = np.asarray(labels).ravel(), np.asarray(predictions).ravel()
    if num_classes is None:
        num_classes = len(class_names) if class_names is not None else int(max(labels.max(), predictions.max())) + 1
    names = [str(c) for c in range(num_classes)] if class_names is None else list(class_names)
    counts = sklearn_confusion_matrix(labels, predictions, labels=np.arange(num_classes))
    rows = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)
    size = 1.0 + 0.55 * num_classes
    figure, axis = plt.subplots(figsize=(size + 1.2, size))
    image = axis.imshow(normalised, cmap="Blues", vmin=0.0, vmax=1.0)
    for row in range(num_classes):
        for column in range(num_classes):
            colour = "white" if normalised[row, column] > 0.5 else "black"
            axis.text(column, row, str(counts[row, column]), ha="center", va="center", color=colour, fontsize=8)
    axis.set_xticks(range(num_classes), names, rotation=45, ha="right", fontsize=8)
    axis.set_yticks(range(num_classes), names, fontsize=8)
    axis.set_xlabel("predicted")
    axis.set_ylabel("reference")
    axis.set_title(title, fontsize=10)
    figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04, label="fraction of row")
    figure.tight_layout()
    return save_figure(figure, path)


def plot_regression_scatter(
    targets: np.ndarray,
    predictions: np.ndarray,
    path: str | Path,
    title: str = "",
    quantity: str = "age (years)",
) -> Path:
    """Predicted against true values `(N,)` with the identity line (perfect prediction), e.g. age."""
    targets, predictions = np.asarray(targets, np.float64), np.asarray(predictions, np.float64)
    low, high = min(targets.min(), predictions.min()), max(targets.max(), predictions.max())
    figure, axis = plt.subplots(figsize=(5.0, 5.0))
    axis.scatter(targets, predictions, s=12, alpha=0.7)
    axis.plot([low, high], [low, high], color="grey", lw=0.8, ls="--", label="identity")
    axis.set_xlabel(f"true {quantity}")
    axis.set_ylabel(f"predicted {quantity}")
    axis.set_title(title, fontsize=10)
    axis.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    return save_figure(figure, path)


def _colour_mask(mask: np.ndarray, num_classes: int, ignore_index: int, alpha: float) -> np.ndarray:
    """RGBA overlay: background (0) transparent, classes from tab10/tab20, `ignore_index` opaque-ish magenta."""
    palette = plt.get_cmap("tab10" if num_classes <= 11 else "tab20")
    rgba = np.zeros(mask.shape + (4,))
    for c in range(1, num_classes):
        rgba[mask == c] = (*palette((c - 1) % palette.N)[:3], alpha)
    rgba[mask == ignore_index] = (*IGNORE_COLOUR, 0.8)
    return rgba


def plot_segmentation_overlay(
    image: np.ndarray,
    prediction: np.ndarray,
    target: np.ndarray | None,
    path: str | Path,
    class_names: Sequence[str] | None = None,
    num_classes: int | None = None,
    ignore_index: int = 255,
    alpha: float = 0.45,
) -> Path:
    """Predicted (and, if given, reference) masks over the grey radiograph, side by side.

    `image` `(H, W)` uint8; `prediction`, `target` `(H, W)` integer masks. Class 0 (background) is not drawn; pixels
    equal to `ignore_index` are drawn magenta (in the prediction panel: wherever the reference or the prediction is
    `ignore_index`, since those pixels are not scored). With a reference, the title gives the image's Dice per class.
    """
    image, prediction = np.asarray(image), np.asarray(prediction)
    if target is not None:
        target = np.asarray(target)
    if num_classes is None:
        scored = prediction != ignore_index  # pixels whose label is drawn as a class colour
        if target is not None:
            scored &= target != ignore_index
        values = [prediction[scored]] if target is None else [prediction[scored], target[target != ignore_index]]
        num_classes = max(int(np.max(v, initial=0)) for v in values) + 1
        num_classes = max(num_classes, 2 if class_names is None else len(class_names))
    names = [str(c) for c in range(num_classes)] if class_names is None else list(class_names)
    names += [str(c) for c in range(len(names), num_classes)]

    shown = prediction.copy()
    if target is not None:
        shown = np.where(target == ignore_index, ignore_index, shown)
    panels = [("prediction", shown)]
    if target is not None:
        panels.append(("reference", target))
    figure, axes = plt.subplots(1, len(panels), figsize=(4.0 * len(panels), 4.4), squeeze=False)
    for axis, (name, mask) in zip(axes[0], panels):
        axis.imshow(image, cmap="gray", vmin=0, vmax=255)
        axis.imshow(_colour_mask(mask, num_classes, ignore_index, alpha), interpolation="nearest")
        axis.set_title(name, fontsize=9)
        axis.axis("off")
    palette = plt.get_cmap("tab10" if num_classes <= 11 else "tab20")
    handles = [Patch(color=palette((c - 1) % palette.N), label=names[c]) for c in range(1, num_classes)]
    handles.append(Patch(color=IGNORE_COLOUR, label=f"ignored ({ignore_index})"))
    figure.legend(handles=handles, loc="lower center", ncol=min(len(handles), 5), fontsize=7, frameon=False)
    if target is not None:
        try:
            dice, _ = dice_iou_from_counts(*segmentation_counts(prediction, target, num_classes, ignore_index))
            parts = [f"{names[c]} {dice[c]:.3f}" for c in range(1, num_classes) if np.isfinite(dice[c])]
            text = "Dice: " + (", ".join(parts) if parts else "n/a")
        except ValueError:  # labels outside [0, num_classes) at scored pixels: no score to show
            text = f"Dice: n/a (labels outside [0, {num_classes}) at scored pixels)"
        figure.suptitle(text, fontsize=9)
    figure.tight_layout(rect=(0, 0.06, 1, 1))
    return save_figure(figure, path)
