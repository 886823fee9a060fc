"""Why is the DINO term where it is? Read the teacher's DINO head off a finished pretraining run.

The DINO loss of a step is at least the entropy of the teacher's per-image targets, so a term that sits near ln K
means either collapse (every image gets the same target: image-target MI 0, the collapse monitor's job) or targets
that differ between images but are each nearly flat. The second case is a matter of geometry. The teacher's logit
for prototype k is the cosine between the L2-normalised bottleneck output z and the (weight-normalised) prototype
w_k, times the prototype's gain g_k. After centering it is divided by a temperature of 0.02 to 0.07. When the z of
all images lie in a narrow cone and the prototypes are still near-random directions, the logits spread by only
~1/sqrt(bottleneck) across prototypes, and the targets stay flat.

For a run folder of `train_pretrain.py` (single process; FSDP checkpoints shard the teacher), this encodes
`--max-images` images at the global crop size with the teacher of the last checkpoint and prints:
- the cone: mean pairwise cosine of z, and the share of z's variation across images in its top 2 directions;
- the prototypes: the share of their energy in their largest singular direction, and the same for random ones;
- the logits: their standard deviation across prototypes, per image, averaged;
- the targets at the run's final teacher temperature: mean per-image entropy and entropy of the mean, vs ln K.

    python benchmarks/head_geometry.py outputs/pretrain --images data/sample/images
"""

import argparse
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from image_processing_rad_dino import RadDinoImageProcessor
from rad_dino_hf.embeddings import list_images
from rad_dino_hf.errors import UserError, reported_user_errors
from rad_dino_hf.trainer import load_checkpoint_networks

REPO = Path(__file__).resolve().parents[1]


def entropy(p: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of the distributions along the last dimension."""
    return -torch.special.xlogy(p, p).sum(-1)


def random_prototype_energy(n_prototypes: int, dim: int) -> float:
    """Top singular direction's energy share for `n_prototypes` Gaussian directions in `dim` dimensions (seeded).

    Above the isotropic 1 / dim by about (1 + sqrt(dim / n_prototypes))^2 (Marchenko-Pastur edge) for a finite K.
    """
    values = torch.linalg.svdvals(torch.randn(n_prototypes, dim, generator=torch.Generator().manual_seed(0))) ** 2
    return float(values[0] / values.sum())


@torch.no_grad()
def head_geometry(z: torch.Tensor, head: torch.nn.Module, center: torch.Tensor, temperature: float) -> dict:
    """The numbers of the module docstring from bottleneck outputs `z` `(N, d)` (unnormalised) and a `DinoHead`."""
    z = F.normalize(z, dim=-1)
    n = z.shape[0]
    cosines = z @ z.T
    variation = torch.linalg.svdvals(z - z.mean(0)) ** 2
    prototypes = torch.linalg.svdvals(head.last_layer.weight) ** 2  # gain x unit direction, (K, d)
    logits = head.last_layer(z)
    targets = F.softmax((logits - center) / temperature, dim=-1)
    return {
        "images": n,
        "z pairwise cosine (mean)": float((cosines.sum() - cosines.diagonal().sum()) / (n * (n - 1))),
        "z variation in top 2 directions": float(variation[:2].sum() / variation.sum()),
        "prototype energy in top direction": float(prototypes[0] / prototypes.sum()),
        "same for random prototypes": random_prototype_energy(*head.last_layer.weight.shape),
        "logit std across prototypes": float(logits.std(dim=1).mean()),
        "teacher temperature": temperature,
        "per-image target entropy": float(entropy(targets).mean()),
        "entropy of the mean target": float(entropy(targets.mean(0))),
        "ln K": math.log(logits.shape[1]),
    }


def report(args: argparse.Namespace) -> None:
    """Print the head's geometry for the command line's run and images."""
    networks = load_checkpoint_networks(args.run)
    teacher, center, recipe = networks.teacher, networks.centers["dino_loss.center"], networks.recipe
    files = list_images(args.images)
    if len(files) < 2:
        raise UserError(f"{args.images} holds a single image; the cone needs two or more")
    files = files[:: max(1, len(files) // args.max_images)][: args.max_images]  # spread over the folder's classes

    size = recipe.crops.global_crops_size
    processor = RadDinoImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    pixels = processor([str(f) for f in files], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        cls = teacher.backbone(pixel_values=pixels).last_hidden_state[:, 0]
        z = teacher.dino_head.mlp(cls)
    numbers = head_geometry(z, teacher.dino_head, center, recipe.teacher.teacher_temp)

    print(f"\n{args.run}, {len(files)} images from {args.images}\n")
    print("| quantity | value |\n|---|---|")
    for name, value in numbers.items():
        print(f"| {name} | {value:.4g} |" if isinstance(value, float) else f"| {name} | {value} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a train_pretrain.py output folder (with recipe.yaml and checkpoints/)")
    parser.add_argument("--images", default=str(REPO / "data" / "sample" / "images"), help="a folder of images")
    parser.add_argument("--max-images", type=int, default=64)
    args = parser.parse_args()
    with reported_user_errors():
        report(args)


if __name__ == "__main__":
    main()
