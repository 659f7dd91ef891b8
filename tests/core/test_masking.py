import pytest
import torch

from vldm_core.masking import (
    context_input,
    interpolated_length,
    interpolation_mask,
    interpolation_windows,
    key_frame_positions,
    prediction_mask,
    spread_key_frames,
)


@pytest.mark.parametrize("context_frames, expected", [(0, [0] * 8), (1, [1] + [0] * 7), (2, [1, 1] + [0] * 6)])
def test_prediction_mask_marks_the_first_s_frames(context_frames, expected):
    assert prediction_mask(8, context_frames).tolist() == expected


def test_prediction_needs_a_frame_to_predict():
    with pytest.raises(ValueError, match="2 context frames need a window of at least 3 frames"):
        prediction_mask(2, 2)


@pytest.mark.parametrize("keys, length", [(2, 5), (3, 9), (8, 29), (29, 113)])
def test_n_key_frames_give_4n_minus_3_frames(keys, length):
    assert interpolated_length(keys) == length  # 8 -> 29 -> 113, as in the paper


def test_key_frames_sit_at_every_fourth_position():
    assert key_frame_positions(4) == [0, 4, 8, 12]
    assert interpolation_mask(3).tolist() == [1, 0, 0, 0, 1, 0, 0, 0, 1]
    with pytest.raises(ValueError, match="at least 2 key frames"):
        interpolated_length(1)


def test_spread_key_frames_places_each_latent_and_zeros_between():
    keys = torch.randn(3, 4, 2, 2)
    frames = spread_key_frames(keys)
    assert frames.shape == (9, 4, 2, 2)
    assert torch.equal(frames[[0, 4, 8]], keys)
    assert frames[[1, 2, 3, 5, 6, 7]].abs().max() == 0


def test_context_input_is_masked_latents_and_mask():
    z = torch.randn(5, 4, 3, 3)
    c = context_input(z, prediction_mask(5, 2))
    assert c.shape == (5, 5, 3, 3)
    assert torch.equal(c[:2, :4], z[:2]) and c[2:, :4].abs().max() == 0
    assert c[:2, 4].eq(1).all() and c[2:, 4].eq(0).all()
    with pytest.raises(ValueError, match="mask has 4 frames, latents have 5"):
        context_input(z, torch.ones(4))


@pytest.mark.parametrize("keys, per_window, expected", [(2, 4, [(0, 2)]), (8, 4, [(0, 4), (3, 7), (6, 8)]), (7, 4, [(0, 4), (3, 7)])])
def test_interpolation_windows_cover_every_key_frame_and_share_one(keys, per_window, expected):
    windows = interpolation_windows(keys, per_window)
    assert windows == expected
    assert windows[0][0] == 0 and windows[-1][1] == keys
    assert all(prev[1] - 1 == nxt[0] for prev, nxt in zip(windows, windows[1:]))
    # the windows' fills tile the full video without gaps or double frames
    assert sum(interpolated_length(e - s) - 1 for s, e in windows) + 1 == interpolated_length(keys)
