"""Overlapping windows and tiles: coverage, exact reassembly, bounded seams."""

import pytest
import torch
import torch.nn.functional as F

from vldm_core.windows import map_tiles, map_windows, ramp, spans


@pytest.mark.parametrize("length, size, overlap", [(5, 8, 2), (8, 8, 2), (9, 8, 2), (30, 8, 2), (17, 6, 3), (100, 16, 4), (13, 7, 0)])
def test_spans_cover_everything_with_full_windows(length, size, overlap):
    windows = spans(length, size, overlap)
    covered = torch.zeros(length)
    for start, end in windows:
        covered[start:end] = 1
        assert end - start == min(size, length)
    assert covered.all() and windows[0][0] == 0 and windows[-1][1] == length
    for (a, b), (c, d) in zip(windows, windows[1:]):
        assert b - c >= overlap and c > a


def test_spans_refuse_an_overlap_as_large_as_the_window():
    with pytest.raises(ValueError, match="smaller than the window"):
        spans(10, 4, 4)


def test_ramp_rises_and_falls_and_stays_positive():
    weights = ramp(8, 3, 2)
    assert torch.allclose(weights, torch.tensor([0.25, 0.5, 0.75, 1, 1, 1, 2 / 3, 1 / 3]))
    assert torch.equal(ramp(5, 0, 0), torch.ones(5))


@pytest.mark.parametrize("length", [7, 8, 23, 64])
def test_a_frame_wise_function_comes_back_exactly(length):
    x = torch.randn(length, 3, 4, 4)
    out = map_windows(lambda w: w * 2 + 1, x, 0, 8, 3)
    assert torch.allclose(out, x * 2 + 1, atol=1e-6)


def test_one_window_that_covers_the_video_is_the_whole_computation():
    x = torch.randn(6, 2, 3, 3)
    calls = []

    def fn(w):
        calls.append(w.shape[0])
        return w.cumsum(0)  # couples frames: windows would change it

    assert torch.equal(map_windows(fn, x, 0, 8, 2), x.cumsum(0)) and calls == [6]


def test_scaled_outputs_blend_at_the_scaled_positions():
    """A 4x nearest upsampler tiled at 8x8 gives the untiled result."""
    x = torch.randn(2, 3, 20, 28)
    upsample = lambda t: F.interpolate(t, scale_factor=4, mode="nearest")  # noqa: E731
    assert torch.allclose(map_tiles(upsample, x, 8, 2, scale=4), upsample(x), atol=1e-6)


def test_seams_of_a_context_dependent_function_are_bounded():
    """A blur sees beyond its tile; tile borders then differ, and blending keeps
    the error at a seam well below an unblended (overlap 0) seam."""
    x = torch.randn(1, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    blur = lambda t: F.avg_pool2d(t, 5, stride=1, padding=2, count_include_pad=False)  # noqa: E731
    exact = blur(x)
    blended = (map_tiles(blur, x, 16, 6) - exact).abs().max()
    hard = (map_tiles(blur, x, 16, 0) - exact).abs().max()
    assert blended < 0.6 * hard


def test_store_receives_every_piece():
    moved = []
    x = torch.randn(20, 2)
    out = map_windows(lambda w: w + 0, x, 0, 8, 2, store=lambda p: moved.append(p.shape[0]) or p)
    assert torch.allclose(out, x) and moved == [8, 8, 8]
