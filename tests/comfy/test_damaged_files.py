"""Damaged files through the nodes in a real ComfyUI: the node raises the pack's
named error, whose message (what the user sees) names the file, the problem
and the fix; the user's MODEL and the file stay as they were."""

import hashlib
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load as load_bytes, save as save_bytes

from prompt_parts import key, sampler_inputs
from tiny_models import write_tiny_bundle

GOOD = "vldm_test_damage_source.safetensors"


def damaged(data, change):
    """Safetensors bytes with ``change(tensors, metadata)`` applied."""
    import json

    metadata = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")]).get("__metadata__", {})
    tensors = load_bytes(data)
    change(tensors, metadata)
    return save_bytes(tensors, metadata)


def nan_in_first(tensors, metadata):
    first = next(iter(tensors))
    tensors[first] = torch.full_like(tensors[first], float("nan"))


DAMAGE = {  # file -> (its bytes from the good file's, phrases the user sees)
    "vldm_test_damaged_nan.safetensors": (lambda data: damaged(data, nan_in_first), ["holds NaN or infinite values in layers.", "download or export it again"]),
    "vldm_test_damaged_truncated.safetensors": (lambda data: data[: len(data) // 2], ["is not a readable safetensors file", "truncated"]),
    "vldm_test_damaged_frames.safetensors": (lambda data: damaged(data, lambda t, m: m.update(train_frames="eight")), ["metadata 'train_frames' = 'eight'", "not a whole number"]),
    "vldm_test_damaged_modes.safetensors": (lambda data: damaged(data, lambda t, m: m.pop("modes")), ["lacks 'modes' in its metadata"]),
    "vldm_test_damaged_integer.safetensors": (lambda data: damaged(data, lambda t, m: t.update({k: v.to(torch.int32) for k, v in list(t.items())[:1]})), ["weights are floating point"]),
}


@pytest.fixture(scope="module")
def files(comfy):
    comfy.save_trained_looking_layers(GOOD, train_frames=4, modes=("keyframe",))
    data = Path(comfy.temporal_layers_dir, GOOD).read_bytes()
    for name, (make, _) in DAMAGE.items():
        Path(comfy.temporal_layers_dir, name).write_bytes(make(data))
    yield
    for name in (GOOD, *DAMAGE):
        os.remove(os.path.join(comfy.temporal_layers_dir, name))


def digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.mark.parametrize("name", list(DAMAGE))
def test_the_patcher_refuses_a_damaged_file_with_its_name_and_the_fix(comfy, files, name):
    before = digest(os.path.join(comfy.temporal_layers_dir, name))
    prompt = {
        "1": {"class_type": "VLDMTest_TinyModel", "inputs": {"seed": 0, "context_dim": 768, "layout": "tiny"}},
        "2": {"class_type": "VLDM_TemporalUNetPatcher", "inputs": {"model": ["1", 0], "temporal_layers": name, "scale": 1.0}},
        "3": {"class_type": "VLDM_KeyframeSampler", "inputs": {**sampler_inputs(["2", 0]), "frames": 4, "width": 64, "height": 64, "frame_rate": 8.0}},
        "4": {"class_type": "VLDMTest_CaptureLatent", "inputs": {"samples": ["3", 0], "key": key()}},
    }
    result = comfy.run(prompt)
    assert result.error["node_type"] == "VLDM_TemporalUNetPatcher"
    assert result.error["exception_type"].endswith("WeightFileError")
    message = result.error["exception_message"]
    assert name in message and all(phrase in message for phrase in DAMAGE[name][1]), message
    assert digest(os.path.join(comfy.temporal_layers_dir, name)) == before


def test_the_users_model_is_untouched_by_a_refused_file(comfy, files):
    bridge = comfy.module("nodes.comfy_bridge")
    errors = comfy.module("vldm_core.file_checks")
    model = comfy.tiny_model()
    state = {k: v.clone() for k, v in model.model.state_dict().items()}
    structure = [name for name, _ in model.model.named_modules()]
    for name in DAMAGE:
        with pytest.raises(errors.WeightFileError, match=name):
            bridge.with_temporal_layers(model, bridge.load_layers_for(model, name), 1.0)
    assert [name for name, _ in model.model.named_modules()] == structure
    assert all(torch.equal(v, state[k]) for k, v in model.model.state_dict().items())
    assert not model.get_additional_models_with_key(bridge.KEY)


def test_the_bundle_loader_refuses_a_damaged_model_file_and_a_damaged_bundle_json(comfy, tmp_path):
    loader = comfy.module("nodes.bundle_loader")
    folder = write_tiny_bundle(tmp_path / "damaged", upscaler=False)
    unet = folder / "unet.safetensors"
    unet.write_bytes(damaged(unet.read_bytes(), nan_in_first))
    before = digest(unet)
    with pytest.raises(ValueError, match="unet.safetensors holds NaN or infinite values in"):
        loader.load_image_bundle(str(folder), "damaged")
    assert digest(unet) == before

    shutil.copy(write_tiny_bundle(tmp_path / "intact", upscaler=False) / "unet.safetensors", unet)
    text = (folder / "bundle.json").read_text().replace('"frame_size": [\n    32,\n    32\n  ]', '"frame_size": "32x32"')
    (folder / "bundle.json").write_text(text)
    with pytest.raises(ValueError, match="bundle.json has frame_size '32x32'.*copy the bundle folder again"):
        loader.load_image_bundle(str(folder), "damaged")
    assert (folder / "bundle.json").read_text() == text
