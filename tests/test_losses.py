"""Losses pinned to hand computations (math module loops), scipy and a textbook numpy Sinkhorn."""

import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

from rad_dino_hf.losses import DINOLoss, KoLeoLoss, iBOTPatchLoss, target_mutual_information
from rad_dino_hf.losses.ibot_patch_loss import masks_weight_from_masks

STUDENT_T = [[0.2, -0.1, 0.05], [-0.3, 0.4, 0.0]]  # (2, 3) student logits
TEACHER_P = [[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]]  # (2, 3) teacher probabilities


def ce_row(student_row, teacher_row, temp=0.1):
    """-sum_k t_k * log softmax(s / temp)_k with plain math."""
    scaled = [v / temp for v in student_row]
    lse = math.log(sum(math.exp(v) for v in scaled))
    return -sum(t * (v - lse) for t, v in zip(teacher_row, scaled))


def ce_mean(student, teacher, temp=0.1):
    return sum(ce_row(s, t, temp) for s, t in zip(student, teacher)) / len(student)


def textbook_sinkhorn(logits, temp, n_iter):
    """Scaling-vector form: P = diag(u) K diag(v), u = r / (K v), v = c / (K^T u); r = 1/K, c = 1/B."""
    kernel = np.exp(np.asarray(logits, dtype=np.float64) / temp).T  # (K, B)
    n_proto, n_samples = kernel.shape
    v = np.ones(n_samples)
    for _ in range(n_iter):
        u = (1.0 / n_proto) / (kernel @ v)
        v = (1.0 / n_samples) / (kernel.T @ u)
    plan = u[:, None] * kernel * v[None, :]
    return (plan * n_samples).T  # (B, K), rescaled so each sample sums to 1


# ----------------------------------------------------------------------------- DINO


def test_dino_loss_two_global_crops_matches_hand_cross_entropy():
    # no local crops: student crop A against teacher crop B and B against A, averaged
    s2 = [[0.0, 0.1, -0.2], [0.3, -0.3, 0.1]]
    t2 = [[0.25, 0.25, 0.5], [0.6, 0.2, 0.2]]
    expected = (ce_mean(STUDENT_T, t2) + ce_mean(s2, TEACHER_P)) / 2
    got = DINOLoss(out_dim=3)(torch.tensor([STUDENT_T, s2]), torch.tensor([TEACHER_P, t2])).item()
    assert got == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("n_local", [3, 8])
def test_dino_loss_excludes_same_crop_and_averages(n_local):
    gen = torch.Generator().manual_seed(0)
    n_global, b, k = 2, 2, 3
    sg = [torch.randn(b, k, generator=gen) * 0.3 for _ in range(n_global)]
    sl = [torch.randn(b, k, generator=gen) * 0.3 for _ in range(n_local)]
    tg = [torch.softmax(torch.randn(b, k, generator=gen), -1) for _ in range(n_global)]
    pairs = [(s, tg[j]) for i, s in enumerate(sg) for j in range(n_global) if j != i]
    pairs += [(s, t) for s in sl for t in tg]
    assert len(pairs) == {3: 8, 8: 18}[n_local]  # DINOv2's count: n_g * (n_g + n_l) - n_g
    expected = sum(ce_mean(s.tolist(), t.tolist()) for s, t in pairs) / len(pairs)
    got = DINOLoss(k)(torch.stack(sg + sl), torch.stack(tg)).item()
    assert got == pytest.approx(expected, rel=1e-5)


def test_dino_loss_without_pairs_is_an_error():
    one_crop = torch.zeros(1, 2, 3)
    with pytest.raises(ValueError, match="no DINO pairs"):
        DINOLoss(3)(one_crop, torch.full((1, 2, 3), 1 / 3))


def test_softmax_center_teacher_and_center_update():
    loss = DINOLoss(out_dim=3, center_momentum=0.9)
    old = [0.1, -0.2, 0.3]
    loss.center.copy_(torch.tensor([old]))
    logits = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
    probs = loss.softmax_center_teacher(torch.tensor(logits), teacher_temp=0.5)
    for row, prow in zip(logits, probs.tolist()):
        z = [(x - c) / 0.5 for x, c in zip(row, old)]
        denom = sum(math.exp(v) for v in z)
        assert prow == pytest.approx([math.exp(v) / denom for v in z], rel=1e-6)
    loss.update_center(torch.tensor(logits))
    batch_mean = [(a + b) / 2 for a, b in zip(*logits)]
    expected = [0.9 * o + 0.1 * m for o, m in zip(old, batch_mean)]
    assert loss.center.tolist()[0] == pytest.approx(expected, rel=1e-6)
    assert "center" in loss.state_dict() and loss.state_dict()["center"].shape == (1, 3)


def test_sinkhorn_matches_textbook_and_row_column_sums():
    logits = [[0.5, -0.2, 0.1], [0.3, 0.8, -0.5], [-0.4, 0.2, 0.9], [0.0, 0.1, 0.2]]  # (B=4, K=3)
    temp = 0.3
    q = DINOLoss(out_dim=3).sinkhorn_knopp_teacher(torch.tensor(logits), temp, n_iterations=3).double().numpy()
    ref = textbook_sinkhorn(logits, temp, 3)
    np.testing.assert_allclose(q, ref, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(q.sum(1), np.ones(4), atol=1e-6)  # each sample is a distribution
    np.testing.assert_allclose(q.sum(0), ref.sum(0), atol=1e-6)  # prototype totals ~ B/K, not exact
    assert not np.allclose(q.sum(0), 4 / 3, atol=1e-6)
    q_conv = DINOLoss(out_dim=3).sinkhorn_knopp_teacher(torch.tensor(logits), temp, n_iterations=200)
    np.testing.assert_allclose(q_conv.sum(0).numpy(), np.full(3, 4 / 3), atol=1e-5)


# ----------------------------------------------------------------------------- iBOT


def test_ibot_loss_per_image_weighting():
    # 3 images x 4 patches: image 0 has 1 masked patch, image 1 has 3, image 2 none
    masks = torch.tensor([[0, 1, 0, 0], [1, 1, 0, 1], [0, 0, 0, 0]], dtype=torch.bool)
    student = [[0.2, -0.1, 0.05], [-0.3, 0.4, 0.0], [0.1, 0.1, -0.2], [0.0, 0.3, 0.2]]  # (M=4, K=3)
    teacher = [[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.2, 0.5, 0.3], [0.4, 0.4, 0.2]]
    ce = [ce_row(s, t) for s, t in zip(student, teacher)]
    expected = (ce[0] / 1 + (ce[1] + ce[2] + ce[3]) / 3 + 0.0) / 3
    loss = iBOTPatchLoss(patch_out_dim=3)
    got = loss(torch.tensor(student), torch.tensor(teacher), masks).item()
    assert got == pytest.approx(expected, rel=1e-6)
    assert masks_weight_from_masks(masks).tolist() == pytest.approx([1.0, 1 / 3, 1 / 3, 1 / 3])


def test_ibot_center_and_sinkhorn():
    loss = iBOTPatchLoss(patch_out_dim=3)
    assert loss.state_dict()["center"].shape == (1, 1, 3)
    logits = [[1.0, 0.0, -1.0], [0.5, 0.5, 2.0], [0.0, 3.0, 1.0]]
    loss.update_center(torch.tensor(logits))
    expected = [0.1 * sum(col) / 3 for col in zip(*logits)]
    assert loss.center.flatten().tolist() == pytest.approx(expected, rel=1e-6)
    probs = loss.softmax_center_teacher(torch.tensor(logits), 0.07)
    assert probs.shape == (3, 3)
    q = loss.sinkhorn_knopp_teacher(torch.tensor(logits), 0.5, torch.tensor(3))
    np.testing.assert_allclose(q.double().numpy(), textbook_sinkhorn(logits, 0.5, 3), rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- KoLeo


def test_koleo_matches_scipy_nearest_neighbour():
    pts = np.array([[1.0, 0.0, 0.0], [0.9, 0.1, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, -3.0], [1.0, 1.0, 1.0]])
    unit = pts / np.linalg.norm(pts, axis=1, keepdims=True)
    d = cdist(unit, unit)
    np.fill_diagonal(d, np.inf)
    expected = -np.mean(np.log(d.min(axis=1) + 1e-8))
    got = KoLeoLoss()(torch.tensor(pts, dtype=torch.float32)).item()
    assert got == pytest.approx(expected, rel=1e-5)


def test_koleo_gradient_spreads_points():
    """A few gradient steps on KoLeo alone push the closest pair apart: the smallest nearest-neighbour distance of
    the normalised points grows."""

    def smallest_distance(points):
        unit = torch.nn.functional.normalize(points, dim=-1)
        return torch.pdist(unit).min().item()

    x = torch.tensor([[1.0, 0.0, 0.1], [0.99, 0.05, 0.1], [0.0, 1.0, 0.0], [0.2, 0.1, 1.0]], requires_grad=True)
    start = smallest_distance(x.detach())
    for _ in range(5):
        loss = KoLeoLoss()(x)
        (gradient,) = torch.autograd.grad(loss, x)
        x = (x - 0.01 * gradient).detach().requires_grad_()
    assert smallest_distance(x.detach()) > 1.5 * start


# ----------------------------------------------------------------------------- collapse monitor


def hand_mutual_information(rows):
    """H(mean row) - mean H(row), with math-module loops (0 log 0 = 0)."""

    def entropy(p):
        return -sum(x * math.log(x) for x in p if x > 0)

    mean = [sum(column) / len(rows) for column in zip(*rows)]
    return entropy(mean) - sum(entropy(row) for row in rows) / len(rows)


def test_target_information_identical_rows_is_zero():
    for row in ([0.7, 0.2, 0.1], [1.0, 0.0, 0.0], [1 / 3] * 3):  # peaked, one-hot, uniform: 0 whatever the shape
        assert float(target_mutual_information(torch.tensor([row] * 5))) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("batch", [2, 5, 8])
def test_target_information_distinct_one_hot_rows_is_log_batch(batch):
    probs = torch.eye(8)[torch.randperm(8, generator=torch.Generator().manual_seed(batch))[:batch]]
    assert float(target_mutual_information(probs)) == pytest.approx(math.log(batch), rel=1e-6)


def test_target_information_matches_hand_computation():
    rows = [[1.0, 0.0], [0.5, 0.5]]  # mean (0.75, 0.25): H = 0.5623, mean H = ln(2) / 2
    expected = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)) - math.log(2) / 2
    assert float(target_mutual_information(torch.tensor(rows))) == pytest.approx(expected, rel=1e-6)
    assert float(target_mutual_information(torch.tensor(TEACHER_P))) == pytest.approx(
        hand_mutual_information(TEACHER_P), rel=1e-6
    )
    assert math.isnan(float(target_mutual_information(torch.zeros(0, 3))))  # no masked patch anywhere


# ----------------------------------------------------------------------------- distributed


def _dist_worker(rank, world, port, logits, out_dir):
    """One gloo rank: Sinkhorn + center update on its half of the batch; results saved to out_dir."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        local = torch.tensor(logits).chunk(world)[rank]
        dino = DINOLoss(out_dim=local.shape[1])
        sk = dino.sinkhorn_knopp_teacher(local, 0.3)
        dino.update_center(local)
        n_local = torch.tensor(local.shape[0])
        ibot = iBOTPatchLoss(local.shape[1]).sinkhorn_knopp_teacher(local, 0.3, n_local)
        mi = target_mutual_information(torch.softmax(local / 0.3, dim=-1))
        torch.save({"sk": sk, "center": dino.center, "ibot": ibot, "n": int(n_local), "mi": mi}, f"{out_dir}/{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_distributed_sinkhorn_and_center_equal_single_process(tmp_path):
    """Two gloo ranks on halves of a batch reproduce the single-process result on the whole batch."""
    import socket

    import torch.distributed as dist
    import torch.multiprocessing as mp

    if not dist.is_available():
        pytest.skip("torch.distributed unavailable")
    logits = [[0.5, -0.2, 0.1], [0.3, 0.8, -0.5], [-0.4, 0.2, 0.9], [0.0, 0.1, 0.2]]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ctx = mp.spawn(_dist_worker, args=(2, port, logits, str(tmp_path)), nprocs=2, join=False)
    if not ctx.join(timeout=120) and not all((tmp_path / f"{r}.pt").exists() for r in range(2)):
        for proc in ctx.processes:
            proc.kill()
        pytest.fail("the two gloo processes did not finish in 120 s (a collective that one rank never joins hangs)")
    while not ctx.join():
        pass
    res = [torch.load(tmp_path / f"{r}.pt") for r in range(2)]
    ref = textbook_sinkhorn(logits, 0.3, 3)
    np.testing.assert_allclose(torch.cat([r["sk"] for r in res]).double().numpy(), ref, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(torch.cat([r["ibot"] for r in res]).double().numpy(), ref, rtol=1e-5, atol=1e-7)
    assert res[0]["n"] == 2  # the caller's count tensor is not all-reduced in place
    expected_center = [0.1 * sum(col) / 4 for col in zip(*logits)]
    for r in res:
        assert r["center"].flatten().tolist() == pytest.approx(expected_center, rel=1e-6)
    # The collapse monitor's batch is the global one: each rank reports the whole batch's mutual information.
    softmax = [[math.exp(x / 0.3) / sum(math.exp(y / 0.3) for y in row) for x in row] for row in logits]
    for r in res:
        assert float(r["mi"]) == pytest.approx(hand_mutual_information(softmax), rel=1e-5)
