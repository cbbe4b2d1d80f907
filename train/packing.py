"""Sparse inputs as one packed token sequence per micro-batch, and attention over it.

Every sample (image, OCR page, codec tokens, sampled frames, collage) becomes patches
(L_i, 3*p*p) with explicit (t, h, w) positions; a micro-batch concatenates them into
(N = sum L_i) tokens with no padding. Attention stays inside each sample:

* samples in at most ``DENSE_RUNS`` runs of equal length (a batch of one image size, codec clips
  of one budget, or a batch sorted by length) -> one dense batched SDPA per run (flash/cuDNN
  kernels, no mask at all);
* CUDA, more runs -> varlen flash attention on cumulative sequence lengths (FlexAttention with a
  document mask where varlen is unavailable);
* CPU, more runs -> SDPA with a block-diagonal boolean mask (exact, O(N^2) memory).

This module imports only torch, so GPU benchmarks can use it without the data stack.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class Packed:
    tokens: torch.Tensor  # (N, 3*p*p) normalised pixels
    pos: torch.Tensor  # (N, 3) float (t, h, w)
    lengths: tuple[int, ...]  # per-sample token counts (python ints: shapes, not data)
    cu_seqlens: torch.Tensor  # (B+1,) int32
    segment: torch.Tensor  # (N,) int64 sample index of each token

    @property
    def batch(self) -> int:
        return len(self.lengths)

    @property
    def runs(self) -> list[tuple[int, int]]:
        """(length, count) of each maximal run of consecutive samples of equal length."""
        out: list[tuple[int, int]] = []
        for n in self.lengths:
            if out and out[-1][0] == n:
                out[-1] = (n, out[-1][1] + 1)
            else:
                out.append((n, 1))
        return out

    def pin_memory(self) -> Packed:
        """The same batch in page-locked memory, so ``to(cuda)`` copies asynchronously."""
        return Packed(
            self.tokens.pin_memory(),
            self.pos.pin_memory(),
            self.lengths,
            self.cu_seqlens.pin_memory(),
            self.segment.pin_memory(),
        )

    def to(self, device, non_blocking: bool = True) -> Packed:
        move = lambda t: t.to(device, non_blocking=non_blocking)  # noqa: E731
        return Packed(move(self.tokens), move(self.pos), self.lengths, move(self.cu_seqlens), move(self.segment))


def pack(items: list[tuple[torch.Tensor, torch.Tensor]]) -> Packed:
    """[(patches (L_i, 3pp), pos (L_i, 3))] -> one Packed sequence."""
    lengths = tuple(int(p.shape[0]) for p, _ in items)
    if min(lengths, default=0) == 0:
        raise ValueError(f"every sample needs at least one token, got lengths {lengths}")
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.tensor(lengths).cumsum(0)
    segment = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    tokens = torch.cat([p for p, _ in items])
    pos = torch.cat([q for _, q in items]).float()
    return Packed(tokens, pos, lengths, cu, segment)


def normalise(img: torch.Tensor) -> torch.Tensor:
    """uint8 (3, H, W) -> CLIP-normalised float."""
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    return (img.float() / 255.0 - mean) / std


def patchify(img: torch.Tensor, patch: int, t: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Float image (3, H, W) -> patches (Hp*Wp, 3*p*p) in raster order, positions (t, h, w)."""
    c, h, w = img.shape
    if h % patch or w % patch:
        raise ValueError(f"image {h}x{w} is not divisible by the patch {patch}")
    hp, wp = h // patch, w // patch
    patches = img.reshape(c, hp, patch, wp, patch).permute(1, 3, 0, 2, 4).reshape(hp * wp, c * patch * patch)
    hh, ww = torch.meshgrid(torch.arange(hp), torch.arange(wp), indexing="ij")
    pos = torch.stack([torch.full_like(hh, 0).float() + t, hh.float(), ww.float()], -1).reshape(-1, 3)
    return patches, pos


def codec_tokens(patches: torch.Tensor, pos: torch.Tensor, patch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Float codec patches (K, 3, s, s) at their (t, h, w) -> tokens; resized when s != patch."""
    if patches.shape[-1] != patch:
        patches = F.interpolate(patches, size=(patch, patch), mode="bilinear", antialias=True, align_corners=False)
    return patches.reshape(patches.shape[0], -1), pos.float()


# ---------------------------------------------------------------------------------------- attention


def block_diagonal_mask(packed: Packed) -> torch.Tensor:
    seg = packed.segment
    return seg[:, None] == seg[None, :]


try:  # flash varlen attention (torch >= 2.9); FlexAttention where it is missing
    from torch.nn.attention.varlen import varlen_attn as _varlen
except ImportError:
    _varlen = None
_flex = None


def _flex_attention(q, k, v, packed: Packed):
    global _flex
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    if _flex is None:
        _flex = torch.compile(flex_attention)
    seg = packed.segment
    n = seg.shape[0]
    mask = create_block_mask(lambda b, h, qi, ki: seg[qi] == seg[ki], None, None, n, n, device=q.device)
    out = _flex(q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None], block_mask=mask)
    return out[0].transpose(0, 1)


# runs of equal length attended as dense batches; beyond, one varlen call (see module doc). On one H100
# dense runs beat varlen up to 8 distinct lengths per pack and lost at 16 (bench_trainer.py --t3-sweep)
DENSE_RUNS = 8


def _dense(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, count: int) -> torch.Tensor:
    """``count`` samples of equal length, back to back: batched SDPA with no mask."""
    n, h, d = q.shape
    q, k, v = (x.view(count, n // count, h, d).transpose(1, 2) for x in (q, k, v))
    return _sdpa(q, k, v).transpose(1, 2).reshape(n, h, d)


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """SDPA on (B, heads, L, d), by the flash kernel where cuDNN's is known to return NaN gradients.

    Measured on an H100 (torch 2.11, cuDNN 9.19, RESULTS.md, Trainer): with 64 keys and every score of
    a query row near -120 (log-sum-exp below about -88), cuDNN's backward, PyTorch's default there,
    returns NaN for every query gradient, where flash, memory-efficient and math kernels are finite;
    128 and 196 keys were clean (upstream reports lengths of 64 modulo 128). A 128 px image is 64
    tokens, so those lengths go to the flash kernel (half precision on CUDA); others keep the default.
    """
    if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and k.shape[-2] % 128 == 64:
        return torch.ops.aten._scaled_dot_product_flash_attention(q, k, v)[0]
    return F.scaled_dot_product_attention(q, k, v)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, packed: Packed) -> torch.Tensor:
    """q, k, v (N, heads, d) -> (N, heads, d), attention restricted to each sample's tokens."""
    runs = packed.runs
    if len(runs) == 1:
        return _dense(q, k, v, runs[0][1])
    if len(runs) <= DENSE_RUNS:
        outs, at = [], 0
        for length, count in runs:
            end = at + length * count
            outs.append(_dense(q[at:end], k[at:end], v[at:end], count))
            at = end
        return outs[0] if len(outs) == 1 else torch.cat(outs)
    if q.is_cuda:
        if _varlen is not None and q.dtype in (torch.float16, torch.bfloat16):  # flash kernels: half only
            m = max(packed.lengths)
            return _varlen(q, k, v, packed.cu_seqlens, packed.cu_seqlens, m, m)
        return _flex_attention(q, k, v, packed)
    mask = block_diagonal_mask(packed)
    out = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=mask)
    return out.transpose(0, 1)


def pool_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, packed: Packed) -> torch.Tensor:
    """One query per sample: q (B, heads, d) over its own tokens k, v (N, heads, d) -> (B, heads, d).

    By runs of equal length like ``attend``: a masked SDPA over the whole batch fell back on CUDA to
    the math kernel, which computes in fp32 (two fp32 GEMMs of ~1 ms per ViT-L step at 224 px).
    """
    runs = packed.runs
    if len(runs) <= max(DENSE_RUNS, 1):
        outs, at, first = [], 0, 0
        for length, count in runs:
            end = at + length * count
            outs.append(_dense_pool(q[first : first + count], k[at:end], v[at:end], count))
            at, first = end, first + count
        return outs[0] if len(outs) == 1 else torch.cat(outs)
    if q.is_cuda and _varlen is not None and q.dtype in (torch.float16, torch.bfloat16):
        cu_q = torch.arange(packed.batch + 1, dtype=torch.int32, device=q.device)
        return _varlen(q.contiguous(), k, v, cu_q, packed.cu_seqlens, 1, max(packed.lengths))
    mask = packed.segment[None, :] == torch.arange(packed.batch, device=q.device)[:, None]
    out = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=mask)
    return out.transpose(0, 1)


def _dense_pool(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, count: int) -> torch.Tensor:
    """``count`` queries (count, heads, d), each over its own sample of an equal-length run; no mask.

    Written out (scores, an fp32 softmax, the weighted sum) rather than as SDPA with one query: on an
    H100, cuDNN's SDPA backward for a single query over 64 keys returns NaN query gradients when every
    score of the row is very negative (log-sum-exp below about -88: see ``_sdpa``; cudnn-frontend issue
    1072 reports the same for dK / dV), which a learned pooling query can reach late in training.
    One query per sample makes this a batched matrix-vector product: no flash kernel to lose; its
    scores are fp32, as a flash kernel keeps them (bf16 scores near -120 would be 0.5 apart).
    """
    n, h, d = k.shape
    k, v = (x.view(count, n // count, h, d) for x in (k, v))
    with torch.autocast(q.device.type, enabled=False):  # scores in fp32, as flash kernels keep them
        scores = torch.einsum("chd,clhd->chl", q.float(), k.float()) * d**-0.5
    return torch.einsum("chl,clhd->chd", scores.softmax(-1).to(v.dtype), v)
