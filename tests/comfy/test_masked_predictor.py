"""The Masked Predictor node in a real ComfyUI: rollout length, unchanged video
so far, and mode errors."""

import pytest
import torch

from prompt_parts import key, sampler_inputs

WINDOW, CONTEXT, SEGMENTS = 6, 2, 2
PREDICTION = "vldm_test_prediction6.safetensors"
KEYFRAME_ONLY = "vldm_test_keyframe_only6.safetensors"
ALL_MODES = "vldm_test_all_modes6.safetensors"  # one file for prediction and interpolation: c_S has the stage channel


@pytest.fixture(scope="module")
def files(comfy):
    comfy.save_trained_looking_layers(PREDICTION, WINDOW, ("keyframe", "prediction"), context_latent_channels=4)
    comfy.save_trained_looking_layers(KEYFRAME_ONLY, WINDOW, ("keyframe",))
    comfy.save_trained_looking_layers(ALL_MODES, WINDOW, ("keyframe", "prediction", "interpolation"), context_latent_channels=4, interpolation_stage=True)


def prompt(layers, keys_key, video_key, segments=SEGMENTS, context_frames=CONTEXT, keys=WINDOW, video=None):
    """Key frames -> Masked Predictor; ``video`` replaces the key frames by a VLDMTest_Latent's inputs."""
    source = (
        {"class_type": "VLDMTest_Latent", "inputs": video} if video
        else {"class_type": "VLDM_KeyframeSampler", "inputs": {**sampler_inputs(["2", 0]), "frames": keys, "width": 32, "height": 32, "frame_rate": 2.5}}
    )
    return {
        "1": {"class_type": "VLDMTest_TinyModel", "inputs": {"seed": 0, "context_dim": 768}},
        "2": {"class_type": "VLDM_TemporalUNetPatcher", "inputs": {"model": ["1", 0], "temporal_layers": layers}},
        "3": source,
        "4": {"class_type": "VLDM_MaskedPredictor", "inputs": {**sampler_inputs(["2", 0], seed=2), "video": ["3", 0], "segments": segments, "context_frames": context_frames, "context_guidance": 1.5}},
        "5": {"class_type": "VLDMTest_CaptureLatent", "inputs": {"samples": ["3", 0], "key": keys_key}},
        "6": {"class_type": "VLDMTest_CaptureLatent", "inputs": {"samples": ["4", 0], "key": video_key}},
    }


@pytest.mark.parametrize("layers", [PREDICTION, ALL_MODES])
def test_rollout_adds_segments_after_the_unchanged_video(comfy, files, layers):
    keys, video = key("keys"), key("video")
    result = comfy.run(prompt(layers, keys, video))
    assert result.ok, result.messages
    before, after = comfy.captured[keys], comfy.captured[video]
    assert after.shape == (WINDOW + SEGMENTS * (WINDOW - CONTEXT), 4, 4, 4)
    assert torch.equal(after[:WINDOW], before)
    assert torch.isfinite(after).all() and after[WINDOW:].std() > 0.1
    # each segment is new, not a copy of its context
    assert (after[WINDOW:WINDOW + 4] - after[WINDOW + 4:]).abs().max() > 1e-2
    assert comfy.latents[video]["frame_rate"] == 2.5


def test_one_progress_bar_counts_every_step_of_every_segment(comfy, files):
    result = comfy.run(prompt(PREDICTION, key("k"), key("v"), segments=3))
    assert result.ok, result.messages
    progress = [(p["value"], p["max"]) for p in result.events("progress") if p["node"] == "4"]
    assert {total for _, total in progress} == {3 * 2}  # segments x steps
    values = [value for value, _ in progress]
    assert values == sorted(values) and values[-1] == 6 and len(set(values)) == 6


def test_per_frame_entries_of_the_shorter_video_are_dropped(comfy, files):
    video = key("v")
    result = comfy.run(prompt(PREDICTION, key("k"), video, segments=1, video={"shape": "3,4,4,4", "frame_rate": 12.0, "noise_mask": True}))
    assert result.ok, result.messages
    out = comfy.latents[video]
    assert out["samples"].shape[0] == 3 + WINDOW - CONTEXT
    assert out["frame_rate"] == 12.0 and "noise_mask" not in out


BAD_VIDEOS = {
    "too few frames for the context": (dict(keys=1), ["2 context frames requested", "has only 1", "use 1 context frame"]),
    "a video model's 5-D latent": (dict(video={"shape": "1,4,6,4,4", "frame_rate": 0.0, "noise_mask": False}), ["(frames, channels, height, width)", "Keyframe Sampler"]),
    "another family's latents": (dict(video={"shape": "6,16,4,4", "frame_rate": 0.0, "noise_mask": False}), ["16 channels", "latents have 4", "another model family"]),
}


@pytest.mark.parametrize("case", list(BAD_VIDEOS))
def test_bad_videos_are_refused_with_the_fix(comfy, files, case):
    changes, phrases = BAD_VIDEOS[case]
    result = comfy.run(prompt(PREDICTION, key("k"), key("v"), **changes))
    assert not result.ok
    assert result.error["node_type"] == "VLDM_MaskedPredictor"
    for phrase in phrases:
        assert phrase in result.error["exception_message"]


def test_keyframe_only_layers_are_refused_with_the_fix(comfy, files):
    result = comfy.run(prompt(KEYFRAME_ONLY, key("k"), key("v")))
    assert not result.ok
    assert "not prediction" in str(result.error) and "prediction model" in str(result.error)
