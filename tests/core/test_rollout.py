import pytest
import torch

from vldm_core.masking import key_frame_positions
from vldm_core.rollout import interpolate, predict_segments


def numbered(frames):
    """Frame i holds the value i everywhere, so positions can be read back."""
    return torch.arange(frames, dtype=torch.float32)[:, None, None, None].expand(frames, 2, 3, 3).clone()


class RecordingSampler:
    """Fills unknown frames with a counter and records what each window knew."""

    def __init__(self):
        self.calls, self.counter = [], 1000.0

    def __call__(self, known, mask, **info):
        self.calls.append((known.clone(), mask.clone(), info))
        out = known.clone() + 0.5  # known frames come back slightly changed: the loop must restore them
        for i in range(known.shape[0]):
            if not mask[i]:
                out[i] = self.counter
                self.counter += 1
        return out


@pytest.mark.parametrize("segments", [1, 4, 16])
@pytest.mark.parametrize("context_frames", [1, 2])
def test_rollout_length_order_and_context(segments, context_frames):
    video, window = numbered(5), 8
    sampler = RecordingSampler()
    out = predict_segments(video, segments, window, context_frames, sampler)
    assert out.shape[0] == 5 + segments * (window - context_frames)
    assert torch.equal(out[:5], video)  # the video so far comes out unchanged
    new = out[5:, 0, 0, 0].tolist()
    assert new == sorted(new) and len(set(new)) == len(new)  # segments in order, no frame twice
    for index, (known, mask, info) in enumerate(sampler.calls):
        assert info == {"index": index, "stage": None}
        assert mask.tolist() == [1.0] * context_frames + [0.0] * (window - context_frames)
        start = 5 + index * (window - context_frames)
        assert torch.equal(known[:context_frames], out[start - context_frames:start])  # conditioned on the last frames
        assert known[context_frames:].abs().max() == 0


def test_rollout_keeps_finished_frames_where_store_puts_them():
    stored = []
    predict_segments(numbered(3), 3, 6, 2, RecordingSampler(), store=lambda x: stored.append(x.shape[0]) or x)
    assert stored == [3, 4, 4, 4]


def test_rollout_refuses_too_short_a_video():
    with pytest.raises(ValueError, match="video so far has only 1"):
        predict_segments(numbered(1), 2, 8, 2, RecordingSampler())
    with pytest.raises(ValueError, match="1 or 2 context frames"):
        predict_segments(numbered(4), 2, 8, 0, RecordingSampler())


@pytest.mark.parametrize("keys, per_window", [(2, 4), (8, 4), (7, 3), (32, 8)])
def test_interpolation_keeps_key_frames_in_place_and_fills_between(keys, per_window):
    key_latents = numbered(keys) * 10
    sampler = RecordingSampler()
    out = interpolate(key_latents, per_window, sampler, stage=1)
    assert out.shape[0] == 4 * keys - 3
    assert torch.equal(out[key_frame_positions(keys)], key_latents)  # exact, though the sampler changed them
    filled = [i for i in range(out.shape[0]) if i % 4]
    assert out[filled, 0, 0, 0].min() >= 1000  # every frame between came from the sampler
    assert len(set(out[filled, 0, 0, 0].tolist())) == len(filled)
    assert [info for _, _, info in sampler.calls] == [{"index": i, "stage": 1} for i in range(len(sampler.calls))]
