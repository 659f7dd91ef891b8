"""Masks and frame layouts of Video LDM's masking-conditioned models (paper, Sec. 3.1.1).

Both the prediction model (long videos) and the interpolation model (high
frame rates) see some frames as known: the context ``c_S = (m * z, m)`` holds
the known latents and the mask ``m`` (1 where a frame is known), one mask value
per frame. Prediction knows the first S frames of a window; interpolation knows
every 4th frame (the key frames) and fills the 3 between each pair.
"""

import torch

INTERPOLATION_FACTOR = 4


def prediction_mask(frames, context_frames):
    """``(frames,)``: 1 for the S context frames at the start of the window."""
    if not 0 <= context_frames < frames:
        raise ValueError(f"{context_frames} context frames need a window of at least {context_frames + 1} frames, got {frames}")
    mask = torch.zeros(frames)
    mask[:context_frames] = 1.0
    return mask


def interpolated_length(key_frames, factor=INTERPOLATION_FACTOR):
    """N key frames -> (N - 1) * factor + 1 frames: 4N - 3 for the paper's 4x."""
    if key_frames < 2:
        raise ValueError(f"interpolation needs at least 2 key frames, got {key_frames}")
    return (key_frames - 1) * factor + 1


def key_frame_positions(key_frames, factor=INTERPOLATION_FACTOR):
    return list(range(0, interpolated_length(key_frames, factor), factor))


def interpolation_mask(key_frames, factor=INTERPOLATION_FACTOR):
    """``(4N - 3,)``: 1 at the key frames' positions."""
    mask = torch.zeros(interpolated_length(key_frames, factor))
    mask[key_frame_positions(key_frames, factor)] = 1.0
    return mask


def spread_key_frames(keys, factor=INTERPOLATION_FACTOR):
    """Key-frame latents ``(N, c, h, w)`` placed at their positions in the
    interpolated video, zeros between: the ``z`` of ``m * z``."""
    frames = torch.zeros((interpolated_length(keys.shape[0], factor),) + tuple(keys.shape[1:]), dtype=keys.dtype, device=keys.device)
    frames[key_frame_positions(keys.shape[0], factor)] = keys
    return frames


def context_input(latents, mask, stage=None):
    """``c_S = (m * z, m)``: latents ``(t, c, h, w)`` and mask ``(t,)`` -> ``(t, c + 1, h, w)``;
    with an interpolation ``stage`` (0: T -> 4T, 1: 4T -> 16T), one more channel holding it."""
    if latents.shape[0] != mask.shape[0]:
        raise ValueError(f"mask has {mask.shape[0]} frames, latents have {latents.shape[0]}")
    m = mask.to(latents)[:, None, None, None].expand(-1, 1, *latents.shape[2:])
    channels = [m * latents, m]
    if stage is not None:
        channels.append(torch.full_like(m, float(stage)))
    return torch.cat(channels, dim=1)


def no_context(latents, stage=None):
    """c_S with no known frame (S = 0, the branch context guidance pushes away from),
    shaped like context_input's for latents ``(t, c, h, w)``."""
    return context_input(latents, torch.zeros(latents.shape[0], device=latents.device), stage)


def keys_per_window(train_frames):
    """The most key frames whose 4N - 3 frames fit the window the layers were trained on."""
    keys = (train_frames - 1) // INTERPOLATION_FACTOR + 1
    if keys < 2:
        raise ValueError(f"these layers were trained on {train_frames} frames; interpolation needs windows of at least 5 (2 key frames and 3 between)")
    return keys


def interpolation_windows(key_frames, keys_per_window):
    """Key-frame index ranges ``[start, end)`` that cover all key frames, each
    window sharing its first key frame with the last of the window before, so
    windows meet at a known frame and their fills line up."""
    if keys_per_window < 2:
        raise ValueError(f"a window needs at least 2 key frames, got {keys_per_window}")
    if key_frames < 2:
        raise ValueError(f"interpolation needs at least 2 key frames, got {key_frames}")
    windows, start = [], 0
    while start < key_frames - 1:
        end = min(start + keys_per_window, key_frames)
        windows.append((start, end))
        start = end - 1
    return windows
