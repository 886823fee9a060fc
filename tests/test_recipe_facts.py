"""Two facts of the DINOv2 recipe that a plausible mistake would break silently: the teacher's EMA momentum follows
its cosine schedule iteration by iteration, and only the second global crop is solarised
(facebookresearch/dinov2, dinov2/data/augmentations.py: `global_transfo1_extra = GaussianBlur(p=1.0)`,
`global_transfo2_extra = Compose([GaussianBlur(p=0.1), RandomSolarize(threshold=128, p=0.2)])`)."""

import math

import pytest
import torch

from rad_dino_hf import trainer
from rad_dino_hf.augment import MultiCropAugmentation, normalize, solarize
from test_pretrain import run, write_recipe
from test_pretrain import images as images  # noqa: F401 (the fixture, by its name)


def test_teacher_takes_the_scheduled_momentum_at_every_iteration(tmp_path, images, monkeypatch):
    """DINOv2's momentum schedule: 1 - (1 - m0) (1 + cos(pi i / T)) / 2 at iteration i of T (m0 = 0.992, final 1),
    passed to the EMA at each iteration; a constant momentum fails here."""
    used = []
    update = trainer.ema_update
    monkeypatch.setattr(
        trainer, "ema_update", lambda teacher, student, m: used.append(m) or update(teacher, student, m)
    )
    run(write_recipe(tmp_path, images), "--set", "train.max_iterations=5")
    total = 4 * 2  # TINY_RECIPE: optim.epochs x train.official_epoch_length
    expected = [1 - (1 - 0.992) * (1 + math.cos(math.pi * i / total)) / 2 for i in range(5)]
    assert used == pytest.approx(expected, abs=1e-9)
    assert len(set(used)) == 5


def test_only_the_second_global_crop_is_solarised():
    """Same draws with solarisation certain and with none: the first global crops are equal, the second is the
    solarised (x >= 0.5 -> 1 - x) version of the unsolarised one."""
    image = torch.linspace(0, 1, 64 * 64).reshape(1, 64, 64)  # values on both sides of the threshold
    crops = {}
    for probability in (0.0, 1.0):
        augmentation = MultiCropAugmentation(
            global_crops_size=32, local_crops_size=16, local_crops_number=2, solarize_probability=probability
        )
        crops[probability] = augmentation(image, generator=torch.Generator().manual_seed(0))
    plain, solarised = crops[0.0]["global_crops"], crops[1.0]["global_crops"]
    assert torch.equal(plain[0], solarised[0])
    grey = plain[1][:1] * augmentation.std + augmentation.mean  # back to [0, 1], one channel
    torch.testing.assert_close(solarised[1], normalize(solarize(grey, augmentation.solarize_threshold)))
    assert not torch.allclose(plain[1], solarised[1])
