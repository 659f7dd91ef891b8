"""Temporal-layer files: safetensors with metadata that says what they fit.

Only safetensors is read (nothing is ever unpickled). The metadata carries the
format version, the UNet layout the layers were built for, the layer config,
the number of frames they were trained on and the modes they were trained for,
so a file that does not fit a MODEL is refused with both sides named.
"""

import json
import os

import safetensors
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .temporal import TemporalConfig, TemporalLayers
from .unet_layout import UNetLayout

FORMAT = "vldm.temporal_layers"
FORMAT_VERSION = 1
MODES = ("keyframe", "prediction", "interpolation", "upscaler", "decoder")


class WeightFileError(ValueError):
    pass


STORAGE = {"float32": torch.float32, "float16": torch.float16}  # how exported weights may be stored; they load as float32


def store_as(path, dtype):
    """Rewrite a safetensors file just exported (temporal layers or a model file)
    with its floating-point tensors in ``dtype`` ("float16" halves it) and its
    metadata unchanged: the loaders copy them into float32 modules."""
    with safetensors.safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    save_file({k: v.to(STORAGE[dtype]) if v.is_floating_point() else v for k, v in tensors.items()}, str(path), metadata=metadata)


def save_temporal_layers(layers: TemporalLayers, path, train_frames, modes=None, prediction_type=None, overwrite=False):
    """Write fp32 weights and metadata; an existing file is kept unless ``overwrite``."""
    modes = tuple(modes or layers.modes)
    unknown = set(modes) - set(MODES)
    if unknown:
        raise ValueError(f"unknown modes {sorted(unknown)}; known: {MODES}")
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} exists; choose another name or pass overwrite=True")
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "unet_layout": layers.layout.to_json(),
        "temporal_config": json.dumps(layers.config.to_dict()),
        "train_frames": str(int(train_frames)),
        "modes": json.dumps(list(modes)),
        "prediction_type": prediction_type or "",
    }
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in layers.state_dict().items()}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_file(tensors, path, metadata=metadata)


def read_metadata(path):
    """The metadata of a temporal-layer file, checked for format and version."""
    name = os.path.basename(path)
    if not str(path).endswith(".safetensors"):
        raise WeightFileError(f"{name}: temporal layers load from .safetensors files only (pickled .ckpt/.pt files are never opened)")
    try:
        with safetensors.safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
            keys = list(f.keys())
    except (safetensors.SafetensorError, OSError) as e:
        raise WeightFileError(f"{name} is not a readable safetensors file ({e}); it may be truncated or corrupt: download or save it again") from e
    if metadata.get("format") != FORMAT:
        raise WeightFileError(f"{name} is not a Video LDM temporal-layer file: {_guess_foreign(keys)}")
    version = int(metadata.get("format_version", "0"))
    if version > FORMAT_VERSION:
        raise WeightFileError(f"{name} has format version {version}, this pack reads up to {FORMAT_VERSION}: update the pack")
    return metadata


def _guess_foreign(keys):
    if any("motion_modules" in k for k in keys):
        return "it looks like an AnimateDiff motion module (use it with AnimateDiff-Evolved)"
    if any("time_stack" in k or "time_mixer" in k for k in keys):
        return "it looks like a Stable Video Diffusion checkpoint (load it with ComfyUI's checkpoint loader)"
    if any(k.startswith(("model.diffusion_model.", "input_blocks.", "first_stage_model.")) for k in keys):
        return "it looks like a Stable Diffusion checkpoint (load it with ComfyUI's checkpoint loader)"
    return "its metadata lacks format='vldm.temporal_layers'; train or export temporal layers with this pack"


def load_temporal_layers(path, unet_layout: UNetLayout, ops=nn, prediction_type=None, target="MODEL") -> TemporalLayers:
    """Build the layers a file describes and load its weights, after checking
    they fit a UNet (or, with ``target`` "VAE", a decoder) of ``unet_layout``."""
    name = os.path.basename(path)
    metadata = read_metadata(path)
    file_layout = UNetLayout.from_json(metadata["unet_layout"])
    mismatch = file_layout.mismatch(unet_layout, target)
    if mismatch:
        raise WeightFileError(
            f"temporal layers in {name} were {mismatch}. Pick a temporal-layer file trained for {unet_layout.family}, or load the {target} they were trained on."
        )
    trained_for = metadata.get("prediction_type") or None
    if trained_for and prediction_type and trained_for != prediction_type:
        raise WeightFileError(
            f"temporal layers in {name} were trained on a {trained_for}-prediction model, this MODEL predicts {prediction_type}: "
            f"use a {trained_for}-prediction checkpoint of {file_layout.family}, or layers trained for {prediction_type}."
        )
    layers = TemporalLayers(
        file_layout,
        TemporalConfig.from_dict(json.loads(metadata["temporal_config"])),
        ops=ops,
        train_frames=int(metadata["train_frames"]),
        modes=json.loads(metadata["modes"]),
    )
    state = load_file(path)
    expected = layers.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong_shape = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong_shape:
        raise WeightFileError(
            f"{name} does not match the layers its own metadata describes (missing {missing[:3]}, unexpected {unexpected[:3]}, "
            f"wrong shape {wrong_shape[:3]}): the file is damaged or was edited; export it again"
        )
    layers.load_state_dict(state)
    return layers
