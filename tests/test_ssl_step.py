"""One self-distillation step against a hand computation (DINOv2, Oquab et al. 2023, sec. 3 and its
`ssl_meta_arch.py`): which crops teacher and student see, the weighted DINO / iBOT / KoLeo terms, the teacher EMA,
no stochastic depth in the teacher, and the DINO center's mean over all processes."""

import copy

import pytest
import torch
import torch.nn.functional as F

from rad_dino_hf.losses import DINOLoss, iBOTPatchLoss
from rad_dino_hf.losses import _dist
from rad_dino_hf.recipe import RecipeConfig
from rad_dino_hf.ssl_model import (
    SelfDistillationNetwork,
    SelfDistillationObjective,
    ema_update,
    make_teacher,
    model_config,
)

N_GLOBAL, N_LOCAL, BATCH, GRID = 2, 2, 3, 4  # 56 px global crops / patch 14 -> 4 x 4 patches
WEIGHTS = {"dino": 0.7, "ibot": 1.3, "koleo": 0.2}  # distinct, so a swapped or dropped weight changes the total
STUDENT_TEMP, TEACHER_TEMP = 0.1, 0.05


@pytest.fixture
def networks(tiny_config):
    """(recipe, student, teacher) of a tiny network; the only place that knows how they are built."""
    recipe = RecipeConfig.from_dict(
        {
            "student": {"drop_path_rate": 0.3},
            "dino": {"head_n_prototypes": 24, "head_hidden_size": 32, "head_bottleneck_size": 16},
            "ibot": {"head_n_prototypes": 24, "head_hidden_size": 32, "head_bottleneck_size": 16},
        }
    )
    recipe.dino.loss_weight, recipe.ibot.loss_weight = WEIGHTS["dino"], WEIGHTS["ibot"]
    recipe.dino.koleo_loss_weight = WEIGHTS["koleo"]
    recipe.dino.student_temp = STUDENT_TEMP
    recipe.train.centering = "centering"
    torch.manual_seed(0)
    student = SelfDistillationNetwork(model_config(recipe, tiny_config))
    with torch.no_grad():
        student.backbone.embeddings.mask_token.normal_()  # a zero mask token would hide a missing mask
    teacher = make_teacher(student)
    with torch.no_grad():  # the teacher lags the student in real training; equal weights would hide a swap
        for parameter in teacher.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return recipe, student, teacher


def _batch():
    generator = torch.Generator().manual_seed(1)
    global_crops = torch.randn(N_GLOBAL, BATCH, 3, 56, 56, generator=generator)
    local_crops = torch.randn(N_LOCAL, BATCH, 3, 28, 28, generator=generator)
    masks = torch.zeros(N_GLOBAL * BATCH, GRID * GRID, dtype=torch.bool)
    masks[0, [0, 1, 5]] = True  # different counts per image: the per-image iBOT weights matter
    masks[3, [2, 3, 4, 8, 9, 15]] = True
    masks[4, [7]] = True
    return global_crops, local_crops, masks


def _record_backbone_calls(network):
    """List of (pixel_values, bool_masked_pos) of every backbone call."""
    calls = []

    def hook(module, args, kwargs):
        pixels = args[0] if args else kwargs["pixel_values"]
        calls.append((pixels.detach().clone(), kwargs.get("bool_masked_pos")))

    network.backbone.register_forward_pre_hook(hook, with_kwargs=True)
    return calls


def _cross_entropy(teacher_probs, student_logits):
    """Batch mean of -sum_k t_k log softmax(s / student_temp)_k: `(B, K)`, `(B, K)` -> scalar."""
    return -(teacher_probs * F.log_softmax(student_logits / STUDENT_TEMP, dim=-1)).sum(-1).mean()


def _hand_loss(student, teacher, global_crops, local_crops, masks):
    """The three weighted terms written out from the paper's definitions, with zero initial centers."""
    flat = global_crops.flatten(0, 1)
    with torch.no_grad():
        tokens = teacher.backbone(flat).last_hidden_state  # the teacher sees the unmasked crops
        t_cls = F.softmax(teacher.dino_head(tokens[:, 0]) / TEACHER_TEMP, dim=-1).chunk(N_GLOBAL)
        t_patch = F.softmax(teacher.patch_head(tokens[:, 1:][masks]) / TEACHER_TEMP, dim=-1)
    tokens = student.backbone(flat, bool_masked_pos=masks).last_hidden_state
    s_global = student.dino_head(tokens[:, 0]).chunk(N_GLOBAL)
    s_local = student.dino_head(student.backbone(local_crops.flatten(0, 1)).last_hidden_state[:, 0]).chunk(N_LOCAL)
    pairs = [(t_cls[j], s_global[i]) for i in range(N_GLOBAL) for j in range(N_GLOBAL) if i != j]
    pairs += [(t_cls[j], s) for s in s_local for j in range(N_GLOBAL)]
    dino = sum(_cross_entropy(t, s) for t, s in pairs) / len(pairs)  # 2 + 4 = 6 pairs

    # iBOT: each masked image's patches averaged, then the mean over all global crops (masked or not)
    s_patch = F.log_softmax(student.patch_head(tokens[:, 1:][masks]) / STUDENT_TEMP, dim=-1)
    per_patch = -(t_patch * s_patch).sum(-1)
    image_of_patch = masks.nonzero()[:, 0]
    ibot = sum(per_patch[image_of_patch == b].mean() for b in image_of_patch.unique()) / (N_GLOBAL * BATCH)

    koleo = 0.0
    for cls in tokens[:, 0].chunk(N_GLOBAL):  # per global crop batch: -mean log distance to nearest neighbour
        x = F.normalize(cls, dim=-1)
        distances = torch.cdist(x, x) + torch.diag(torch.full((BATCH,), float("inf")))
        koleo = koleo - torch.log(distances.min(dim=1).values + 1e-8).mean()
    return {"dino": WEIGHTS["dino"] * dino, "ibot": WEIGHTS["ibot"] * ibot, "koleo": WEIGHTS["koleo"] * koleo}


def test_one_step_equals_the_hand_computation(networks):
    recipe, student, teacher = networks
    student.eval()  # drop path off, so the hand computation sees the same student
    global_crops, local_crops, masks = _batch()
    expected = _hand_loss(student, teacher, global_crops, local_crops, masks)

    teacher_calls, student_calls = _record_backbone_calls(teacher), _record_backbone_calls(student)
    objective = SelfDistillationObjective(recipe, student.config)
    terms = objective(student, teacher, global_crops, local_crops, masks, TEACHER_TEMP)

    [(teacher_pixels, teacher_mask)] = teacher_calls  # one teacher pass, on the global crops, never masked
    assert torch.equal(teacher_pixels, global_crops.flatten(0, 1))
    assert teacher_mask is None or not teacher_mask.any()
    student_masks = {tuple(pixels.shape[-2:]): mask for pixels, mask in student_calls}
    assert len(student_calls) == 2 and set(student_masks) == {(56, 56), (28, 28)}
    assert student_masks[(56, 56)] is not None and torch.equal(student_masks[(56, 56)], masks)  # globals masked
    assert student_masks[(28, 28)] is None or not student_masks[(28, 28)].any()  # locals not

    for name in ("dino", "ibot", "koleo"):
        torch.testing.assert_close(getattr(terms, name), expected[name], rtol=1e-5, atol=1e-6, msg=name)
    torch.testing.assert_close(terms.total, sum(expected.values()), rtol=1e-5, atol=1e-6)


def test_ema_update_follows_its_formula(networks):
    _, student, teacher = networks
    before = copy.deepcopy(teacher.state_dict())
    momentum = 0.9
    ema_update(teacher, student, momentum)
    student_state = student.state_dict()
    for name, tensor in teacher.state_dict().items():
        expected = momentum * before[name] + (1 - momentum) * student_state[name]
        torch.testing.assert_close(tensor, expected, rtol=1e-6, atol=1e-7, msg=name)
    assert not any(p.requires_grad for p in teacher.parameters())


def test_teacher_has_no_drop_path_and_the_student_does(networks):
    _, student, teacher = networks
    teacher.train()
    student.train()
    pixels = torch.randn(4, 3, 56, 56, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.manual_seed(0)
        first = teacher.backbone(pixels).last_hidden_state
        torch.manual_seed(1)
        assert torch.equal(first, teacher.backbone(pixels).last_hidden_state)  # deterministic in training mode
        torch.manual_seed(0)
        a = student.backbone(pixels).last_hidden_state
        torch.manual_seed(1)
        assert not torch.equal(a, student.backbone(pixels).last_hidden_state)  # stochastic depth is on
    assert teacher.backbone.config.drop_path_rate == 0.0 and student.backbone.config.drop_path_rate == 0.3


@pytest.fixture
def two_processes(monkeypatch):
    """Simulate a second process: every all-reduce adds `other[0]` (that process's tensor), world size 2."""
    other = []

    def all_reduce(tensor, *args, **kwargs):
        tensor.add_(other.pop(0))

    monkeypatch.setattr(_dist, "is_distributed", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda *args, **kwargs: 2)
    monkeypatch.setattr(torch.distributed, "all_reduce", all_reduce)
    return other


def test_centers_are_the_mean_over_all_processes(two_processes):
    mine = torch.tensor([[0.5, -0.2, 0.1], [0.3, 0.8, -0.5]])
    theirs = torch.tensor([[-0.4, 0.2, 0.9], [0.0, 0.1, 2.2]])
    expected = 0.1 * torch.cat([mine, theirs]).mean(0)  # (1 - m) * mean over both processes' 4 rows, m = 0.9

    dino = DINOLoss(out_dim=3, center_momentum=0.9)
    two_processes.append(theirs.sum(0, keepdim=True))
    dino.update_center(mine)
    torch.testing.assert_close(dino.center.flatten(), expected)

    ibot = iBOTPatchLoss(3, center_momentum=0.9)
    two_processes.append(theirs.mean(0, keepdim=True))  # iBOT: mean of the per-process means (equal M here)
    ibot.update_center(mine)
    torch.testing.assert_close(ibot.center.flatten(), expected)
