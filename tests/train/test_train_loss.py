import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from ports import free_port

from train.config import HeadConfig
from train.loss import ConceptHeads, PartialFC, draw_labels, shard_range

C, D = 37, 16  # class count not divisible by the world size: uneven shards


def reference_loss(emb, centres, labels, cfg: HeadConfig, gen_seed):
    """Full-softmax CosFace over all classes, one softmax per drawn label column, averaged."""
    cols = draw_labels(labels, cfg.draw, torch.Generator().manual_seed(gen_seed))
    cos = F.normalize(emb) @ F.normalize(centres).T
    losses = []
    for j in range(cols.shape[1]):
        onehot = F.one_hot(cols[:, j], centres.shape[0]).bool()
        z = torch.where((cos > cfg.filter) & ~onehot, torch.zeros_like(cos), cos)
        z = torch.where(onehot, cos - cfg.margin, z) * cfg.scale
        losses.append(F.cross_entropy(z, cols[:, j], reduction="none"))
    return torch.stack(losses, 1).mean()


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10, 8, generator=g)
    proj = torch.randn(8, D, generator=g)
    labels = torch.randint(0, C, (10, 4), generator=g)
    centres = torch.randn(C, D, generator=g)
    # make some negatives very close to a positive so the 0.75 filter is exercised
    centres[labels[0, 1]] = centres[labels[0, 0]] + 0.01 * centres[labels[0, 1]]
    return x, proj, labels, centres


def test_single_rank_matches_full_softmax():
    cfg = HeadConfig(num_classes=C, sample_rate=1.0, draw=3)
    x, proj, labels, centres = _data()
    head = PartialFC(cfg, D)
    with torch.no_grad():
        head.weight.copy_(centres)
    emb = x @ proj
    loss = head(emb, labels, torch.Generator().manual_seed(5), torch.Generator().manual_seed(6))
    torch.testing.assert_close(loss, reference_loss(emb, centres, labels, cfg, 5), rtol=1e-5, atol=1e-5)


def _worker(rank, world, port, out, sampled):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    cfg = HeadConfig(num_classes=C, sample_rate=1.0, draw=3)
    x, proj, labels, centres = _data()
    lo, hi = shard_range(C, rank, world)
    head = PartialFC(cfg, D, sampled_update=sampled)
    with torch.no_grad():
        head.local_weight().copy_(centres[lo:hi])
    # a replicated "backbone" under DDP: gradients are averaged across ranks like in training
    backbone = torch.nn.Linear(8, D, bias=False)
    with torch.no_grad():
        backbone.weight.copy_(proj.T)
    ddp = torch.nn.parallel.DistributedDataParallel(backbone)
    rows = slice(0, 6) if rank == 0 else slice(6, 10)  # unequal per-rank batches
    mine = labels[rows] if rank == 0 else labels[rows, :3]  # ranks may hold label rows of different widths
    loss = head(ddp(x[rows]), mine, torch.Generator().manual_seed(5), torch.Generator().manual_seed(6 + rank))
    loss.backward()
    if sampled:  # the scored rows' gradient (every row at rate 1), as the sampled-row AdamW takes it
        rows, grad = head.take_grad()
        centre_grad = torch.zeros(hi - lo, D).index_add_(0, rows, grad)
    else:
        centre_grad = head.weight.grad.to_local().clone()
    out[rank] = {
        "loss": loss.detach(),
        "backbone_grad": backbone.weight.grad.clone(),
        "centre_grad": centre_grad,
        "rows": (lo, hi),
    }
    dist.destroy_process_group()


@pytest.mark.parametrize("sampled", [False, True], ids=["dense", "sampled_update"])
def test_two_ranks_with_rate_one_equal_full_softmax_loss_and_gradients(sampled):
    world = 2
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_worker, args=(world, free_port(), out, sampled), nprocs=world, join=True)
    cfg = HeadConfig(num_classes=C, sample_rate=1.0, draw=3)
    x, proj, labels, centres = _data()
    labels[6:, 3] = -1  # rank 1 sent three labels per row; the gather pads the fourth with -1
    w = proj.T.clone().requires_grad_(True)
    c = centres.clone().requires_grad_(True)
    ref = reference_loss(x @ w.T, c, labels, cfg, 5)
    ref.backward()
    for rank in range(world):
        got = out[rank]
        torch.testing.assert_close(got["loss"], ref.detach(), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got["backbone_grad"], w.grad, rtol=1e-4, atol=1e-5)
        lo, hi = got["rows"]
        torch.testing.assert_close(got["centre_grad"], c.grad[lo:hi], rtol=1e-4, atol=1e-5)


def test_sampling_keeps_positives_and_scores_a_tenth():
    cfg = HeadConfig(num_classes=1000, sample_rate=0.1, draw=8, filter=2.0)
    head = PartialFC(cfg, D)
    emb = torch.randn(6, D)
    labels = torch.randint(0, 1000, (6, 10))
    calls = []
    orig = torch.Tensor.topk
    try:
        torch.Tensor.topk = lambda self, k, *a, **kw: calls.append(k) or orig(self, k, *a, **kw)
        loss = head(emb, labels, torch.Generator().manual_seed(0), torch.Generator().manual_seed(0))
    finally:
        torch.Tensor.topk = orig
    assert calls == [100]
    # with every class scored the sampled loss can only be larger (more negatives in each softmax)
    full = PartialFC(HeadConfig(num_classes=1000, sample_rate=1.0, draw=8, filter=2.0), D)
    with torch.no_grad():
        full.weight.copy_(head.weight)
    full_loss = full(emb, labels, torch.Generator().manual_seed(0), torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and loss < full_loss


def test_bank_initialises_centres_and_is_checked(tmp_path):
    bank = np.random.default_rng(0).normal(size=(C, D)).astype(np.float32)
    np.save(tmp_path / "bank.npy", bank)
    head = PartialFC(HeadConfig(num_classes=C, bank=str(tmp_path / "bank.npy")), D)
    assert torch.equal(head.weight.detach(), torch.from_numpy(bank))
    with pytest.raises(ValueError, match="holds 37 classes.*num_classes=40"):
        PartialFC(HeadConfig(num_classes=40, bank=str(tmp_path / "bank.npy")), D)
    with pytest.raises(ValueError, match="dim 16"):
        PartialFC(HeadConfig(num_classes=C, bank=str(tmp_path / "bank.npy")), 32)


def test_heads_route_modalities_and_weight_losses():
    heads = ConceptHeads(
        (
            HeadConfig(name="image", modalities=("image",), num_classes=20, sample_rate=1.0, weight=2.0),
            HeadConfig(name="video", modalities=("video",), num_classes=30, sample_rate=1.0, weight=0.5),
        ),
        D,
    )
    emb = torch.randn(5, D)
    labels = torch.randint(0, 20, (5, 3))
    total, parts = heads(emb, ["image", "video", "image", "video", "image"], labels, seed=0, step=0)
    torch.testing.assert_close(total, 2.0 * parts["image"] + 0.5 * parts["video"])
    with pytest.raises(ValueError, match="no head takes them"):
        heads(emb, ["ocr"] * 5, labels, seed=0, step=0)


def test_unlabelled_rows_add_no_loss_and_an_unlabelled_batch_gives_zero_not_nan():
    """Word labels (0-100 per OCR page): rows of -1 are masked, so the loss is the labelled rows' loss."""
    x, proj, labels, centres = _data()
    labels[2:4] = -1  # pages without words
    labels[5, 2:] = -1  # a page with two words
    cfg = HeadConfig(num_classes=C, sample_rate=1.0, draw=4)  # draw >= k: every label used, order irrelevant
    head = PartialFC(cfg, D)
    with torch.no_grad():
        head.weight.copy_(centres)
    emb = x @ proj
    gen = torch.Generator
    masked = head(emb, labels, gen().manual_seed(1), gen().manual_seed(2))
    kept = torch.tensor([i for i in range(10) if i not in (2, 3)])
    alone = head(emb[kept], labels[kept], gen().manual_seed(1), gen().manual_seed(2))
    torch.testing.assert_close(masked, alone)
    valid = labels[kept] >= 0
    rows = [
        reference_loss(emb[kept][valid[:, j]], centres, labels[kept][valid[:, j]][:, j : j + 1], cfg, 0)
        for j in range(4)
    ]
    weights = valid.sum(0).float()
    torch.testing.assert_close(masked, (torch.stack(rows) * weights).sum() / weights.sum(), rtol=1e-5, atol=1e-5)
    emb.requires_grad_(True)
    empty = head(emb, torch.full((10, 0), -1), gen().manual_seed(1), gen().manual_seed(2))
    empty.backward()
    assert empty.item() == 0.0 and torch.isfinite(emb.grad).all() and torch.isfinite(head.weight.grad).all()
