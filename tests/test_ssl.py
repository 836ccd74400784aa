"""Contrastive losses against hand-written formulas, the MoCo queue and momentum, and leak-free batch norm."""
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from galtools.models import build_encoder  # noqa: E402
from galtools.ssl import (ContrastiveEncoder, MoCo, SimCLR, SplitBatchNorm2d,  # noqa: E402
                          info_nce, nt_xent)
from galtools.ssl.moco import permutation  # noqa: E402


def cosine_over_tau(a, b, tau):
    return float(np.dot(a, b) / (tau * np.linalg.norm(a) * np.linalg.norm(b)))


def equation_1(q, k_pos, k_negs, tau):
    """Equation (1) of Hayat et al. 2021, term by term in float64."""
    positive = math.exp(cosine_over_tau(q, k_pos, tau))
    negatives = sum(math.exp(cosine_over_tau(q, k, tau)) for k in k_negs)
    return -math.log(positive / (positive + negatives))


def test_info_nce_is_equation_1_of_the_talk():
    rng = np.random.default_rng(1)
    q, k_pos, k_neg = rng.normal(size=(6, 16)), rng.normal(size=(6, 16)), 3 * rng.normal(size=(40, 16))
    expected = np.mean([equation_1(q[i], k_pos[i], k_neg, 0.2) for i in range(6)])
    got = info_nce(torch.tensor(q), torch.tensor(k_pos), torch.tensor(k_neg), temperature=0.2)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    # and at another temperature, to show tau is used as written
    expected_07 = np.mean([equation_1(q[i], k_pos[i], k_neg, 0.7) for i in range(6)])
    assert info_nce(torch.tensor(q), torch.tensor(k_pos), torch.tensor(k_neg), 0.7).item() == pytest.approx(
        expected_07, rel=1e-5)


def nt_xent_by_hand(z1, z2, tau):
    views = np.concatenate([z1, z2])
    n = len(z1)
    losses = []
    for i in range(2 * n):
        positive = (i + n) % (2 * n)
        denominator = sum(math.exp(cosine_over_tau(views[i], views[j], tau)) for j in range(2 * n) if j != i)
        losses.append(-math.log(math.exp(cosine_over_tau(views[i], views[positive], tau)) / denominator))
    return float(np.mean(losses))


def test_nt_xent_is_simclr_formula():
    rng = np.random.default_rng(2)
    z1, z2 = rng.normal(size=(5, 8)), rng.normal(size=(5, 8))
    got = nt_xent(torch.tensor(z1), torch.tensor(z2), temperature=0.2)
    assert got.item() == pytest.approx(nt_xent_by_hand(z1, z2, 0.2), rel=1e-5)


def test_nt_xent_split_over_ranks_averages_to_the_global_loss():
    # What each of 3 ranks computes with the gathered views averages to the one-process loss of the global batch.
    rng = np.random.default_rng(3)
    z1, z2 = torch.tensor(rng.normal(size=(6, 8))), torch.tensor(rng.normal(size=(6, 8)))
    per_rank = [nt_xent(z1[r * 2:r * 2 + 2], z2[r * 2:r * 2 + 2], 0.2, z1, z2, offset=r * 2) for r in range(3)]
    assert torch.stack(per_rank).mean().item() == pytest.approx(nt_xent(z1, z2, 0.2).item(), rel=1e-6)


def tiny_moco(**kw):
    torch.manual_seed(0)
    return MoCo(build_encoder("tiny", 3, width=0.5), dim=8, **kw)


def test_queue_enqueues_and_wraps_around():
    moco = tiny_moco(queue_size=10)
    start = moco.queue.clone()
    batches = [torch.full((4, 8), float(i + 1)) for i in range(3)]
    moco.enqueue(batches[0])
    moco.enqueue(batches[1])
    assert int(moco.queue_ptr) == 8
    assert torch.equal(moco.queue[8:], start[8:])          # not reached yet
    moco.enqueue(batches[2])                                 # 2 rows at the end, 2 wrap to the front
    assert int(moco.queue_ptr) == 2
    expected_fill = [3, 3, 1, 1, 2, 2, 2, 2, 3, 3]             # batch 3 overwrote the oldest entries of batch 1
    assert moco.queue[:, 0].tolist() == expected_fill
    with pytest.raises(ValueError, match="cannot enqueue 11"):
        moco.enqueue(torch.zeros(11, 8))


def test_momentum_update_is_the_ema_formula():
    moco = tiny_moco(momentum=0.9)
    with torch.no_grad():
        for p in moco.encoder_q.parameters():
            p.add_(torch.randn_like(p))
    before_k = [p.clone() for p in moco.encoder_k.parameters()]
    query = [p.clone() for p in moco.encoder_q.parameters()]
    moco.momentum_update()
    for old_k, q, new_k in zip(before_k, query, moco.encoder_k.parameters()):
        torch.testing.assert_close(new_k, 0.9 * old_k + 0.1 * q, rtol=0, atol=1e-6)
    assert all(not p.requires_grad for p in moco.encoder_k.parameters())


def test_split_batchnorm_normalises_each_interleaved_group_on_its_own():
    torch.manual_seed(0)
    split = SplitBatchNorm2d(4, num_splits=2, momentum=0.5)
    with torch.no_grad():
        split.weight.copy_(torch.tensor([1.0, 2.0, 0.5, 1.5]))
        split.bias.copy_(torch.tensor([0.0, 1.0, -1.0, 0.2]))
    x = torch.randn(6, 4, 3, 3) * 2 + 1
    out = split.train()(x)
    for g in range(2):
        group = x[g::2]
        mean = group.mean(dim=(0, 2, 3), keepdim=True)
        var = group.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
        manual = (group - mean) / torch.sqrt(var + split.eps) * split.weight.view(1, -1, 1, 1) + split.bias.view(
            1, -1, 1, 1)
        assert torch.allclose(out[g::2], manual, atol=1e-5)
    # running mean: average of each group's 0.5 * 0 + 0.5 * batch mean
    expected_running = 0.5 * (x[0::2].mean(dim=(0, 2, 3)) + x[1::2].mean(dim=(0, 2, 3))) / 2
    assert torch.allclose(split.running_mean, expected_running, atol=1e-6)
    # channels_last in -> channels_last out, same values
    out_cl = SplitBatchNorm2d(4, 2).train()(x.contiguous(memory_format=torch.channels_last))
    assert out_cl.is_contiguous(memory_format=torch.channels_last)
    # eval mode is plain batch norm with the running statistics, and the state dict is BatchNorm2d's
    plain = torch.nn.BatchNorm2d(4)
    plain.load_state_dict(split.state_dict())
    assert torch.allclose(split.eval()(x), plain.eval()(x))


def test_moco_keys_use_shuffled_split_batchnorm():
    """Object i's key is computed in a sub-batch of other objects than its query: check against plain BN."""
    moco = tiny_moco(queue_size=32, bn_splits=2)
    assert sum(isinstance(m, SplitBatchNorm2d) for m in moco.encoder_k.modules()) > 0
    x = torch.randn(8, 3, 16, 16)
    k, k_all = moco.encode_keys(x, seed=5)
    assert k is k_all and torch.allclose(k.norm(dim=1), torch.ones(8))
    perm = permutation(8, 5, torch.device("cpu"))
    plain = MoCo(build_encoder("tiny", 3, width=0.5), dim=8, queue_size=32).encoder_k
    plain.load_state_dict(moco.encoder_k.state_dict())
    plain.train()
    for g in range(2):
        members = perm[g::2]                                 # positions g, g+2, ... of the shuffled batch
        expected = torch.nn.functional.normalize(plain(x[members]), dim=1)
        assert torch.allclose(k[members], expected, atol=1e-5)


def test_moco_forward_trains_query_encoder_only_and_fills_queue():
    moco = tiny_moco(queue_size=16, bn_splits=2)
    x = torch.randn(4, 3, 16, 16)
    loss, accuracy = moco(x, x + 0.01 * torch.randn_like(x), seed=1)
    loss.backward()
    assert math.isfinite(loss.item()) and 0 <= accuracy.item() <= 1
    assert all(p.grad is None for p in moco.encoder_k.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in moco.encoder_q.parameters())
    assert int(moco.queue_ptr) == 4


def test_simclr_loss_matches_nt_xent_of_the_views():
    torch.manual_seed(0)
    model = SimCLR(build_encoder("tiny", 3, width=0.5), dim=8).eval()
    x1, x2 = torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)
    loss, _ = model(x1, x2)
    expected = nt_xent_by_hand(model.encoder_q(x1).detach().double().numpy(),
                               model.encoder_q(x2).detach().double().numpy(), 0.2)
    assert loss.item() == pytest.approx(expected, rel=1e-4)


def _ddp_worker(rank, world, init_file, result_file):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)
    moco = MoCo(build_encoder("tiny", 3, width=0.5), dim=8, queue_size=32)
    x_global = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    k, k_all = moco.encode_keys(x_global[rank * 4:(rank + 1) * 4], seed=7)
    z1 = torch.randn(8, 8, generator=torch.Generator().manual_seed(2), requires_grad=True)
    z2 = torch.randn(8, 8, generator=torch.Generator().manual_seed(3), requires_grad=True)
    from galtools.ssl import distributed as ddp
    mine1, mine2 = z1[rank * 4:(rank + 1) * 4], z2[rank * 4:(rank + 1) * 4]
    loss = nt_xent(mine1, mine2, 0.2, ddp.gather_with_grad(mine1), ddp.gather_with_grad(mine2), offset=rank * 4)
    loss.backward()
    if rank == 0:
        torch.save({"k": k, "k_all": k_all, "grad1": z1.grad, "loss": loss.detach(), "state": moco.state_dict()},
                   result_file)
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.slow  # two processes under torch.distributed
def test_shuffle_bn_and_gathers_across_two_gloo_ranks(tmp_path):
    """Two real processes: keys are computed on a shuffled slice of the global batch and un-shuffled; NT-Xent
    gradients through the gather reach the rank that owns each embedding."""
    import torch.multiprocessing as mp
    result = tmp_path / "rank0.pt"
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(result)), nprocs=2, join=True)
    got = torch.load(result, weights_only=True)
    torch.manual_seed(0)
    moco = MoCo(build_encoder("tiny", 3, width=0.5), dim=8, queue_size=32)
    moco.load_state_dict(got["state"])
    moco.train()
    x_global = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    perm = permutation(8, 7, torch.device("cpu"))
    expected = torch.empty(8, 8)
    for r in range(2):                                      # rank r ran the key encoder on perm[4r:4r+4]
        rows = perm[r * 4:(r + 1) * 4]
        expected[rows] = torch.nn.functional.normalize(moco.encoder_k(x_global[rows]), dim=1)
    assert torch.allclose(got["k_all"], expected, atol=1e-5)
    assert torch.equal(got["k"], got["k_all"][:4])
    # rank 0's gradient on its own rows: the sum over ranks of their losses' gradients, through the gather
    z1 = torch.randn(8, 8, generator=torch.Generator().manual_seed(2), requires_grad=True)
    z2 = torch.randn(8, 8, generator=torch.Generator().manual_seed(3), requires_grad=True)
    (nt_xent(z1, z2, 0.2) * 2).backward()   # sum of the 2 ranks' mean losses = 2 x the global mean
    assert torch.allclose(got["grad1"][:4], z1.grad[:4], atol=1e-6)


def test_simclr_normalises_each_view_with_its_own_batch_statistics():
    torch.manual_seed(0)
    model = SimCLR(build_encoder("tiny", 3, width=0.5), dim=8).train()
    x1, x2 = torch.randn(4, 3, 16, 16), 5 + torch.randn(4, 3, 16, 16)
    loss, _ = model(x1, x2)
    plain = ContrastiveEncoder(build_encoder("tiny", 3, width=0.5), 8)   # ordinary batch norm
    plain.load_state_dict(model.encoder_q.state_dict())
    plain.train()
    expected = nt_xent_by_hand(plain(x1).detach().double().numpy(), plain(x2).detach().double().numpy(), 0.2)
    assert loss.item() == pytest.approx(expected, rel=1e-4)
