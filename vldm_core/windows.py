"""Overlapping windows along one axis of a tensor, blended back together.

The temporal decoder runs in windows of frames, the video upscaler in spatial
tiles and windows of frames: each piece is computed alone (bounded memory) and
the pieces are blended across their overlaps with linear ramps, so seams fade
instead of jumping. Window positions depend only on the length, the window size
and the overlap, never on free memory, so a result is the same on any machine.
"""

import torch


def spans(length, size, overlap):
    """``[start, end)`` windows of ``size`` covering ``range(length)``, ``overlap``
    apart at least; the last one ends at ``length``. One window if it covers all."""
    if size < 1 or not 0 <= overlap < size:
        raise ValueError(f"a window of {size} with overlap {overlap}: the overlap must be at least 0 and smaller than the window")
    if length <= size:
        return [(0, length)]
    starts = list(range(0, length - size, size - overlap)) + [length - size]
    return [(start, start + size) for start in starts]


def ramp(size, fade_in, fade_out):
    """Blend weights of one window: rising over its first ``fade_in`` positions,
    falling over its last ``fade_out``, 1 between; always above 0."""
    position = torch.arange(size, dtype=torch.float32)
    weights = torch.ones(size)
    if fade_in:
        weights = torch.minimum(weights, (position + 1) / (fade_in + 1))
    if fade_out:
        weights = torch.minimum(weights, (size - position) / (fade_out + 1))
    return weights


def map_windows(fn, x, dim, size, overlap, scale=1, store=None):
    """``fn`` over overlapping windows of ``x`` along ``dim``, blended: where the
    windows' outputs agree the result equals them. ``fn`` may make its axis
    ``scale`` times longer (a decoder's 8x); ``store`` moves each output where
    the result is assembled (e.g. off the GPU)."""
    length = x.shape[dim]
    windows = spans(length, size, overlap)
    if len(windows) == 1:
        out = fn(x)
        return store(out) if store else out
    total = weight_sum = None
    for k, (start, end) in enumerate(windows):
        piece = fn(x.narrow(dim, start, end - start))
        piece = store(piece) if store else piece
        fade_in = (windows[k - 1][1] - start) * scale if k > 0 else 0
        fade_out = (end - windows[k + 1][0]) * scale if k + 1 < len(windows) else 0
        weights = ramp(piece.shape[dim], fade_in, fade_out).to(piece)
        shape = [1] * piece.ndim
        shape[dim] = -1
        if total is None:
            out_shape = list(piece.shape)
            out_shape[dim] = length * scale
            total = piece.new_zeros(out_shape)
            weight_sum = piece.new_zeros(length * scale)
        total.narrow(dim, start * scale, piece.shape[dim]).add_(piece * weights.view(shape))
        weight_sum[start * scale:start * scale + piece.shape[dim]] += weights
    shape = [1] * total.ndim
    shape[dim] = -1
    return total.div_(weight_sum.view(shape))


def piece_count(frames, height, width, window, overlap, tile=0, tile_overlap=0):
    """How many pieces a run of map_windows over frames (of map_tiles over
    ``tile``-sized tiles, where ``tile`` is set) computes: a progress bar's length."""
    count = len(spans(frames, window, overlap))
    if tile:
        count *= len(spans(height, tile, tile_overlap)) * len(spans(width, tile, tile_overlap))
    return count


def map_tiles(fn, x, size, overlap, scale=1, store=None):
    """``fn`` over overlapping square spatial tiles of ``x``'s last two axes, blended."""
    return map_windows(lambda rows: map_windows(fn, rows, -1, size, overlap, scale, store), x, -2, size, overlap, scale, store)


def map_video(fn, video, window, overlap, tile=0, tile_overlap=0, scale=1, store=None):
    """``fn`` over overlapping windows of a video's frames ``(t, c, h, w)`` and,
    with ``tile``, over overlapping square tiles of each window, blended; each
    piece is one video to ``fn``. piece_count gives how many pieces that is."""

    def per_window(frames):
        return map_tiles(fn, frames, tile, tile_overlap, scale, store) if tile else fn(frames)

    return map_windows(per_window, video, 0, window, overlap, store=store)
