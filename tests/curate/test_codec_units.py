"""Codec patchification building blocks, each against an independently computed answer."""

from __future__ import annotations

import numpy as np
import pytest

from curate.codec import residual, saliency, selection, signals, tokens
from shards import fields


def test_chunk_positions_are_whole_frames_on_the_64_grid():
    pos = selection.chunk_positions(8)
    assert pos.dtype == np.int16 and pos.shape == (8 * 256, 3)
    assert np.unique(pos[:, 0]).tolist() == [0, 9, 18, 27, 36, 45, 54, 63]  # floor(linspace(0, 63, 8))
    first = pos[pos[:, 0] == 9]
    assert first[:, 1].tolist() == np.repeat(np.arange(16), 16).tolist()
    assert first[:, 2].tolist() == np.tile(np.arange(16), 16).tolist()


def test_spatial_positions_cover_any_divisible_image():
    pos = selection.spatial_positions(32, 48)
    assert pos.tolist() == [[0, 0, 0], [0, 0, 1], [0, 0, 2], [0, 1, 0], [0, 1, 1], [0, 1, 2]]
    with pytest.raises(ValueError, match="divisible"):
        selection.spatial_positions(30, 48)


def test_top_k_is_global_sorted_and_breaks_ties_by_grid_order():
    scores = np.zeros((4, 2, 2))
    scores[2, 1, 0], scores[0, 0, 1] = 5.0, 3.0
    pos = selection.top_k(scores, 4)
    # the two best, then ties (all zero) in raster order: (0,0,0), (0,1,0)... first two zeros
    assert pos.tolist() == [[0, 0, 0], [0, 0, 1], [0, 1, 0], [2, 1, 0]]
    whole = selection.top_k(scores, 5, first_frame="whole")
    assert whole.tolist() == [[0, 0, 0], [0, 0, 1], [0, 1, 0], [0, 1, 1], [2, 1, 0]]
    valid = np.array([[True, False], [True, True]])
    assert [0, 0, 1] not in selection.top_k(scores, 4, valid=valid).tolist()


def test_budget_and_fallback():
    assert selection.budget_k(0.125, 16384) == 2048 and selection.budget_k(0.031, 16384) == 508
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="budget"):
            selection.budget_k(bad, 100)
    scores = np.random.default_rng(0).random((16, 4, 4))
    pos = selection.uniform_frames(scores, 16 * 3 + 2)  # three whole frames, two best of the rest
    frames, counts = np.unique(pos[:, 0], return_counts=True)
    whole = frames[counts == 16].tolist()
    assert whole == [0, 8, 15] and len(pos) == 50
    rest = np.ones(scores.shape, bool)
    rest[whole] = False
    best_two = np.sort(scores[rest])[-2:]
    assert np.allclose(np.sort(scores[tuple(pos[counts.repeat(counts) < 16].T)]), best_two)


def test_rasterize_places_blocks_and_signs_motion():
    mvs = np.zeros(
        3,
        dtype=[
            (n, t)
            for n, t in [
                ("source", "<i4"),
                ("w", "u1"),
                ("h", "u1"),
                ("src_x", "<i2"),
                ("src_y", "<i2"),
                ("dst_x", "<i2"),
                ("dst_y", "<i2"),
                ("flags", "<u8"),
                ("motion_x", "<i4"),
                ("motion_y", "<i4"),
                ("motion_scale", "<u2"),
            ]
        ],
    )
    # a 16x16 block centred at (24, 8) copied from 2 px to its right: the content moved 2 px left
    mvs[0] = (-1, 16, 16, 26, 8, 24, 8, 0, 8, 0, 4)
    # an 8x8 block centred at (4, 28) predicted from the future, quarter-pel (-6, 2) -> (-1.5, 0.5)
    mvs[1] = (1, 8, 8, 0, 0, 4, 28, 0, -6, 2, 4)
    # an 8x8 block half outside the frame's right edge: clipped to the last column, not wrapped
    mvs[2] = (-1, 8, 8, 0, 0, 32, 20, 0, 4, 4, 4)
    disp, has = signals.rasterize([None, mvs], 32, 32)
    assert not has[0].any()  # a frame without vectors (an I-frame)
    disp, has = disp[1], has[1]
    assert has[0].sum() == 16 + 2 and has[1].sum() == 4
    assert np.all(disp[0, 0:4, 4:8] == [-2.0, 0.0])  # dst - src
    assert np.all(disp[1, 6:8, 0:2] == [-1.5, 0.5])  # src - dst for a future reference
    assert np.all(disp[0, 4:6, 7] == [-1.0, -1.0]) and not has[0, :, 0].any()


def test_camera_model_recovers_a_similarity_despite_a_mover():
    t, g = 3, 32
    yy, xx = np.mgrid[:g, :g]
    x, y = (xx + 0.5) / g * 2 - 1, (yy + 0.5) / g * 2 - 1
    truth = np.zeros((t, g, g, 2), np.float32)
    for i, (tx, ty, a, b) in enumerate([(2.0, -1.0, 0.0, 0.0), (0.5, 0.5, 0.3, 0.0), (-1.0, 0.0, 0.1, 0.2)]):
        truth[i, ..., 0] = tx + a * x - b * y
        truth[i, ..., 1] = ty + b * x + a * y
    observed = truth.copy()
    observed[:, 4:14, 4:14] = [6.0, -5.0]  # a moving object: 10 % of the cells
    has = np.ones((t, g, g), bool)
    has[:, 20:, :3] = False  # intra blocks
    fit = saliency.camera_model(observed, has, "similarity")
    assert np.abs(fit - truth).max() < 0.05
    median = saliency.camera_model(observed, has, "median")
    assert np.allclose(median[0], [2.0, -1.0])  # pure translation: the median is exact


def test_mc_residual_matches_a_direct_computation():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 256, (2, 16, 16), dtype=np.uint8)
    prev = rng.integers(0, 256, (2, 16, 16), dtype=np.uint8)
    vel = rng.integers(-5, 6, (2, 4, 4, 2)).astype(np.float32)
    got = residual.mc_residual(y, prev, vel)
    for t in range(2):
        for i in range(4):
            for j in range(4):
                dx, dy = vel[t, i, j]
                rows = np.clip(np.arange(4 * i, 4 * i + 4) - int(dy), 0, 15)
                cols = np.clip(np.arange(4 * j, 4 * j + 4) - int(dx), 0, 15)
                want = np.abs(
                    y[t, 4 * i : 4 * i + 4, 4 * j : 4 * j + 4].astype(int) - prev[t][np.ix_(rows, cols)]
                ).mean()
                assert got[t, i, j] == pytest.approx(want)
    # a frame that is its predecessor shifted by (2, 1) is predicted exactly by that vector
    shifted = np.roll(prev, (1, 2), axis=(1, 2))
    exact = residual.mc_residual(shifted, prev, np.broadcast_to(np.float32([2, 1]), (2, 4, 4, 2)))
    assert exact[:, 1:, 1:].max() == 0 and residual.mc_residual(shifted, prev, 0 * vel)[:, 1:, 1:].mean() > 20


def test_compiled_pixel_loops_equal_their_numpy_definitions():
    rng = np.random.default_rng(7)
    y = rng.integers(0, 256, (3, 24, 32), dtype=np.uint8)
    prev = rng.integers(0, 256, (3, 24, 32), dtype=np.uint8)
    big = rng.integers(-40, 41, (3, 12, 16, 2)).astype(np.float32) + 0.5  # beyond reach 8, and .5 ties
    small = rng.normal(0, 3, (3, 12, 16, 2)).astype(np.float32)
    reach, cell = 8, 2
    padded = np.pad(prev, ((0, 0), (reach, reach), (reach, reach)), mode="edge")
    errors = {}
    for name, vel in (("big", big), ("small", small)):
        shift = np.rint(vel).astype(int)
        errors[name] = np.zeros((3, 12, 16))
        for t, i, j in np.ndindex(3, 12, 16):
            top = np.clip(cell * i - shift[t, i, j, 1] + reach, 0, 24 + 2 * reach - cell)
            left = np.clip(cell * j - shift[t, i, j, 0] + reach, 0, 32 + 2 * reach - cell)
            block = y[t, cell * i : cell * i + cell, cell * j : cell * j + cell].astype(int)
            errors[name][t, i, j] = np.abs(block - padded[t, top : top + cell, left : left + cell]).mean()
    got = residual.mc_residual(y, prev, big, small, cell=cell, reach=reach)
    want = np.minimum(errors["big"], errors["small"])
    assert got.dtype == np.float32 and np.array_equal(got, want.astype(np.float32))
    agree = rng.random((3, 12, 16)) < 0.5  # cells whose two fields give the same shift (computed once)
    got = residual.mc_residual(y, prev, big, np.where(agree[..., None], big, small), cell=cell, reach=reach)
    assert np.array_equal(got, np.where(agree, errors["big"], want).astype(np.float32))

    yi = y.astype(int)
    grad = np.zeros_like(yi)
    grad[:, :, 1:] = np.abs(np.diff(yi, axis=2))
    grad[:, 1:, :] += np.abs(np.diff(yi, axis=1))
    texture = grad.reshape(3, 6, 4, 8, 4).mean(axis=(2, 4))
    assert np.array_equal(residual.cell_texture(y, 4), texture.astype(np.float32))
    quad = yi[:, ::2, ::2] + yi[:, 1::2, ::2] + yi[:, ::2, 1::2] + yi[:, 1::2, 1::2]
    assert np.array_equal(residual.half_size(y), (quad + 2) // 4)


def test_compiled_percentile_equals_numpy_bit_for_bit():
    rng = np.random.default_rng(11)
    rows = [
        rng.random((3, 4096)),
        rng.integers(0, 1021, (4, 500)) / 4,  # quarter grey levels with ties, as the residual
        np.where(rng.random((3, 777)) < 0.9, 0.0, rng.exponential(3, (3, 777))),  # mostly zero, as motion
        rng.exponential(1, (2, 300)) * 10.0 ** rng.integers(-40, 38, (2, 300)),  # every octave, subnormals
        np.full((2, 9), 0.7),
        np.sort(rng.random((2, 1000)))[:, ::-1],
        rng.random((1, 1)),
    ]
    rows[0][1, 7] = np.inf
    for energy in (r.astype(np.float32) for r in rows):
        for q in (0, 5, 37.3, 50, 95, 99.9, 100):
            with np.errstate(invalid="ignore"):  # inf - inf, as in NumPy's own interpolation
                want, got = np.percentile(energy, q, axis=1), saliency.percentile(energy, q)
            assert got.dtype == want.dtype and np.array_equal(got.view(np.uint32), want.view(np.uint32))
    for odd in ([[1.0, -2.0, 3.0]], [[1.0, np.nan, 3.0]], [[0.0, -0.0, 1.0]]):  # left to NumPy
        energy = np.array(odd, np.float32)
        assert np.array_equal(saliency.percentile(energy, 95), np.percentile(energy, 95, axis=1), equal_nan=True)
    assert saliency.percentile(np.arange(5.0)[None], 50).dtype == np.float64


def test_top_k_cut_equals_a_stable_sort():
    rng = np.random.default_rng(12)
    for trial in range(300):
        n = int(rng.integers(1, 200))
        flat = [rng.random(n), rng.integers(0, 4, n) * 1.0, np.where(rng.random(n) < 0.3, -np.inf, 1.0)][trial % 3]
        count = int(rng.integers(-1, n + 2))
        order = np.argsort(-flat, kind="stable")[: max(count, 0)]
        want = np.zeros(n, bool)
        want[order[np.isfinite(flat[order])]] = True
        assert np.array_equal(selection._top(flat, count), want)


def test_compiled_vector_loops_equal_their_numpy_definitions():
    from curate.codec.patchify import _combine, _fields

    rng = np.random.default_rng(13)
    disp = rng.normal(0, 3, (4, 2, 6, 5, 2)).astype(np.float32)
    disp[rng.random(disp.shape) < 0.2] = -0.0  # zero vectors of past references are -0.0
    present = rng.random((4, 2, 6, 5)) < 0.6
    dist = rng.integers(1, 5, (4, 2)).astype(np.float32)
    terms = np.where(present[..., None], disp / dist[:, :, None, None, None], np.float32(0))
    count = present.sum(axis=1)
    total = np.float32(0) + terms[:, 0] + terms[:, 1]  # the loop's order: from zero, direction by direction
    want = np.where(count[..., None] > 0, total / np.maximum(count, 1)[..., None], 0).astype(np.float32)
    velocity, has = _combine(disp, present, dist)
    assert np.array_equal(velocity.view(np.uint32), want.view(np.uint32)) and np.array_equal(has, count > 0)

    model = rng.normal(0, 2, velocity.shape).astype(np.float32)
    for scale in (1, 2):
        own, camera, motion = _fields(velocity, has, model, np.float32(scale))
        rel = velocity - model
        want_motion = np.where(has, np.sqrt(rel[..., 0] ** 2 + rel[..., 1] ** 2), 0.0)
        wants = (np.where(has[..., None], velocity, 0.0) / scale, model / scale, want_motion)
        for got, ref in zip((own, camera, motion), wants, strict=True):
            assert got.dtype == ref.dtype == np.float32 and np.array_equal(got.view(np.uint32), ref.view(np.uint32))


def test_mosaic_patches_do_not_bleed():
    rng = np.random.default_rng(2)
    colours = rng.integers(20, 236, (70, 3)).astype(np.uint8)
    patches = np.broadcast_to(colours[:, None, None, :], (70, 16, 16, 3)).copy()  # flat YCbCr patches
    image = tokens.mosaic(patches)
    assert image.shape == (3 * 16, 32 * 16, 3)
    back = fields.mosaic(tokens.encode_jpeg(image, 95), 70).astype(np.int16)
    error = np.abs(back - tokens.to_rgb(colours[:, None, :]).astype(np.int16)[:, :, None, :])
    # each patch is coded as its own MCU: exact inside; only libjpeg's "fancy" chroma upsampling
    # at decode time blends the outermost pixel with the neighbour's chroma (random colours here)
    assert error[:, 1:-1, 1:-1].max() <= 3
    assert error.mean() < 6


def test_video_range_is_mapped_to_jpeg_range():
    limited = np.array([[[16, 128, 128], [235, 128, 128], [126, 128, 128]]], np.uint8)
    full = tokens.jpeg_ycbcr(limited, full_range=False, bt709=False)
    assert full[0, :, 0].tolist() == [0, 255, 128] and (full[0, :, 1:] == 128).all()
    grey709 = tokens.jpeg_ycbcr(np.array([[[100, 128, 128]]], np.uint8), True, True)
    assert grey709.tolist() == [[[100, 128, 128]]]  # greys do not depend on the matrix
    red709 = tokens.to_rgb(tokens.jpeg_ycbcr(np.array([[[63, 102, 240]]], np.uint8), False, True))
    assert np.abs(red709.astype(int) - [255, 0, 0]).max() <= 4  # BT.709 limited-range pure red


def test_tokens_equal_their_direct_definitions():
    """The tiled gather, the 2x2 chroma writes and the range tables give the bytes of the plain formulas."""
    rng = np.random.default_rng(5)
    y = rng.integers(0, 256, (6, 64, 48), dtype=np.uint8)
    u, v = (rng.integers(0, 256, (6, 32, 24), dtype=np.uint8) for _ in range(2))
    pos = np.stack([rng.integers(0, 6, 40), rng.integers(0, 4, 40), rng.integers(0, 3, 40)], 1).astype(np.int16)
    up = lambda c: c.repeat(2, axis=0).repeat(2, axis=1)  # noqa: E731
    want = [
        np.dstack(
            [
                y[t, 16 * h : 16 * h + 16, 16 * w : 16 * w + 16],
                up(u[t, 8 * h : 8 * h + 8, 8 * w : 8 * w + 8]),
                up(v[t, 8 * h : 8 * h + 8, 8 * w : 8 * w + 8]),
            ]
        )
        for t, h, w in pos
    ]
    assert np.array_equal(tokens.gather(y[:5], u[:5], v[:5], pos[pos[:, 0] < 5], 16), np.stack(want)[pos[:, 0] < 5])
    frames = tokens.frames_ycbcr(y, u, v, np.array([1, 4]))
    assert np.array_equal(frames, np.concatenate([np.dstack([y[t], up(u[t]), up(v[t])]) for t in (1, 4)]))
    values = np.concatenate([rng.integers(0, 256, (20000, 3)), np.repeat(np.arange(256)[:, None], 3, 1)]).astype(
        np.uint8
    )
    m = (tokens._BT601 @ np.linalg.inv(tokens._BT709)).T.astype(np.float32)
    for full in (False, True):
        for bt709 in (False, True):
            x = values.astype(np.float32) - np.array([0, 128, 128], np.float32)
            if not full:
                x = (x - np.array([16, 0, 0], np.float32)) * np.array([255 / 219, 255 / 224, 255 / 224], np.float32)
            if bt709:
                x = x @ m
            plain = np.clip(x + np.array([0, 128, 128], np.float32) + 0.5, 0, 255).astype(np.uint8)
            assert np.array_equal(tokens.jpeg_ycbcr(values, full, bt709), plain), (full, bt709)


def test_reference_distance_recovers_how_far_back_the_reference_is():
    ref = np.random.default_rng(3).integers(0, 256, (96, 96), dtype=np.uint8)
    cur = np.roll(ref, (-2, 3), axis=(0, 1))  # one frame later: moved by (3, -2)
    for d in (1, 2, 3, 4):  # a vector pointing d frames back measures d times the per-frame motion
        assert signals.reference_distance(cur, ref, np.array([3.0, -2.0]) * d) == d
    assert signals.reference_distance(cur, ref, np.array([0.2, 0.1])) == 1  # no camera motion: irrelevant


def test_rasterize_onto_a_coarser_grid_equals_sampling_the_full_raster(tmp_path):
    import av

    from curate.demo.synthetic_video import make_clip

    path = tmp_path / "wide.mp4"
    make_clip(path, size=(320, 192), frames=6, pan=(2, 1))
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        s.codec_context.options = {"flags2": "+export_mvs"}
        mvs = [f.side_data.get("MOTION_VECTORS") for f in c.decode(s)]
    mvs = [None if m is None else m.to_ndarray() for m in mvs]
    assert sum(m is not None for m in mvs) >= 4
    rows, cols = signals.grid_index((320, 192), (0, 0, 64, 64), 16)  # 80x48 source cells -> 16x16
    full_disp, full_has = signals.rasterize(mvs, 320, 192)
    disp, has = signals.rasterize(mvs, 320, 192, rows, cols)
    assert np.array_equal(has, full_has[:, :, rows, cols]) and has[1:].any()
    assert np.array_equal(disp, full_disp[:, :, rows, cols])
    gain = np.float32([64 / 320, 64 / 192])
    scaled, _ = signals.rasterize(mvs, 320, 192, rows, cols, gain)
    assert np.array_equal(scaled.view(np.uint32), (disp * gain).view(np.uint32))  # the same bits as a pass after


def test_moving_regions_are_counted_per_frame_never_across_frames():
    """A region of 4 cells in each of two frames at the same place is two regions of 4, not one of 8."""
    motion = np.zeros((4, 8, 8), np.float32)
    motion[0:2, 2:4, 2:4] = 2.0  # frames 0 and 1: 4 cells each, stacked in time
    motion[3, 5:8, 0:2] = 2.0  # frame 3: 6 cells, 8-connected with the diagonal neighbour below
    motion[3, 4, 2] = 2.0
    res, has = np.full_like(motion, 10.0), np.ones(motion.shape, bool)
    assert saliency.moving_share(motion, has, res, 0.5, 3.0, 6) == 0.25  # frame 3 alone (7 cells)
    assert saliency.moving_share(motion, has, res, 0.5, 3.0, 4) == 0.75
    assert saliency.moving_share(motion, np.zeros_like(has), res, 0.5, 3.0, 64) == 1.0  # no vectors: change alone
