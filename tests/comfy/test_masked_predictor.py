"""The Masked Predictor node in a real ComfyUI: rollout length, unchanged video
so far, and mode errors."""

import uuid

import pytest
import torch

WINDOW, CONTEXT, SEGMENTS = 6, 2, 2
PREDICTION = "vldm_test_prediction6.safetensors"
KEYFRAME_ONLY = "vldm_test_keyframe_only6.safetensors"


@pytest.fixture(scope="module")
def files(comfy):
    comfy.save_trained_looking_layers(PREDICTION, WINDOW, ("keyframe", "prediction"), context_latent_channels=4)
    comfy.save_trained_looking_layers(KEYFRAME_ONLY, WINDOW, ("keyframe",))


def sampler_inputs(model, seed=1):
    return {"model": model, "positive": ["1", 1], "negative": ["1", 2], "seed": seed, "steps": 2, "cfg": 4.0, "sampler_name": "euler", "scheduler": "normal"}


def prompt(layers, keys_key, video_key, segments=SEGMENTS, context_frames=CONTEXT):
    return {
        "1": {"class_type": "VLDMTest_TinyModel", "inputs": {"seed": 0, "context_dim": 768}},
        "2": {"class_type": "VLDM_TemporalUNetPatcher", "inputs": {"model": ["1", 0], "temporal_layers": layers}},
        "3": {"class_type": "VLDM_KeyframeSampler", "inputs": {**sampler_inputs(["2", 0]), "frames": WINDOW, "width": 32, "height": 32}},
        "4": {"class_type": "VLDM_MaskedPredictor", "inputs": {**sampler_inputs(["2", 0], seed=2), "video": ["3", 0], "segments": segments, "context_frames": context_frames, "context_guidance": 1.5}},
        "5": {"class_type": "VLDMTest_CaptureLatent", "inputs": {"samples": ["3", 0], "key": keys_key}},
        "6": {"class_type": "VLDMTest_CaptureLatent", "inputs": {"samples": ["4", 0], "key": video_key}},
    }


def test_rollout_adds_segments_after_the_unchanged_video(comfy, files):
    keys, video = f"keys-{uuid.uuid4().hex[:6]}", f"video-{uuid.uuid4().hex[:6]}"
    result = comfy.run(prompt(PREDICTION, keys, video))
    assert result.ok, result.messages
    before, after = comfy.captured[keys], comfy.captured[video]
    assert after.shape == (WINDOW + SEGMENTS * (WINDOW - CONTEXT), 4, 4, 4)
    assert torch.equal(after[:WINDOW], before)
    assert torch.isfinite(after).all() and after[WINDOW:].std() > 0.1
    # each segment is new, not a copy of its context
    assert (after[WINDOW:WINDOW + 4] - after[WINDOW + 4:]).abs().max() > 1e-2


def test_keyframe_only_layers_are_refused_with_the_fix(comfy, files):
    result = comfy.run(prompt(KEYFRAME_ONLY, f"k-{uuid.uuid4().hex[:6]}", f"v-{uuid.uuid4().hex[:6]}"))
    assert not result.ok
    assert "not prediction" in str(result.error) and "prediction model" in str(result.error)
