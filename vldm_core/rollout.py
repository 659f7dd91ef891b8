"""Long and dense videos from a model that sees one window of frames at a time.

Both loops are written against ``sample_window(known, mask, index, [stage])``,
which denoises window number ``index`` given ``c_S = (mask * known, mask)`` and
returns the window's latents; the node layer supplies it (ComfyUI's samplers),
tests supply small fakes. Only the current window lives where the sampler puts
it: finished frames go through ``store`` (e.g. to the CPU), so memory does not
grow with length. Known frames come out exactly as they went in.
"""

import torch

from .masking import interpolation_mask, interpolation_windows, prediction_mask, spread_key_frames


def _keep(x):
    return x


def predict_segments(video, segments, window, context_frames, sample_window, stage=None, store=_keep):
    """Autoregressive rollout (paper, Sec. 3.1.1): each new segment is a window
    whose first ``context_frames`` are the last frames of the video so far.
    Returns ``video`` followed by ``segments * (window - context_frames)`` new
    frames. ``stage``: the stage flag, for layers that serve interpolation too."""
    if context_frames < 1:
        raise ValueError("a rollout needs 1 or 2 context frames to continue the video from")
    if video.shape[0] < context_frames:
        raise ValueError(f"{context_frames} context frames requested, but the video so far has only {video.shape[0]}: sample more key frames first, or use 1 context frame")
    mask = prediction_mask(window, context_frames)
    pieces, tail = [store(video)], video[-context_frames:]
    for index in range(segments):
        known = torch.zeros((window,) + tuple(video.shape[1:]), dtype=video.dtype)
        known[:context_frames] = tail
        new = sample_window(known, mask, index=index, stage=stage)[context_frames:]
        pieces.append(store(new))
        tail = torch.cat([tail.to(new.device), new])[-context_frames:]
    return torch.cat([p.to(pieces[0].device) for p in pieces])


def interpolate(keys, keys_per_window, sample_window, stage=0, store=_keep):
    """4x interpolation (paper, Sec. 3.1.1): N key frames -> 4N - 3 frames, in
    windows of key frames that share their end frames; key frames keep their
    latents and positions. ``stage`` tells the model which pass of a 16x chain this is."""
    windows = interpolation_windows(keys.shape[0], keys_per_window)
    pieces = []
    for index, (start, end) in enumerate(windows):
        window_keys = keys[start:end]
        known = spread_key_frames(window_keys)
        mask = interpolation_mask(end - start)
        frames = sample_window(known, mask, index=index, stage=stage).clone()
        frames[mask.bool()] = window_keys.to(frames)  # the key frames, exactly
        pieces.append(store(frames if index == 0 else frames[1:]))
    return torch.cat([p.to(pieces[0].device) for p in pieces])
