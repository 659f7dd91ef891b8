"""Temporal-layer files: the pack's own, whose metadata says what they fit, and
AnimateDiff's motion modules, recognised from their keys and shapes.

Only safetensors is read (nothing is ever unpickled). The pack's metadata
carries the format version, the layer family, the UNet layout the layers were
built for, the layer config, the number of frames they were trained on and the
modes they were trained for; an AnimateDiff file says as much through its
tensors. Either way a file that does not fit a MODEL is refused with both sides
named, before any tensor is read, and the tensors are checked against the
layers they describe before any is copied.
"""

import json
import os
import re
from dataclasses import dataclass

import safetensors
import torch
from safetensors.torch import save_file
from torch import nn

from .file_checks import WeightFileError, config_from, first_non_finite, open_safetensors
from .motion_module import MotionModuleConfig
from .temporal import TemporalConfig, TemporalLayers
from .unet_layout import UNetLayout

FORMAT = "vldm.temporal_layers"
FORMAT_VERSION = 2  # 2 adds the layer family and the layout's placement; version-1 files hold Video LDM layers
FAMILIES = {"videoldm": TemporalConfig, "motion_module": MotionModuleConfig}
MODES = ("keyframe", "prediction", "interpolation", "upscaler", "decoder")
MAX_FRAMES = 4096  # the most frames a window of temporal layers may have been trained on
DAMAGED = "the file is damaged or was edited; download or export it again"


STORAGE = {"float32": torch.float32, "float16": torch.float16}  # how exported weights may be stored; they load as float32


def store_as(path, dtype):
    """Rewrite a safetensors file just exported (temporal layers or a model file)
    with its floating-point tensors in ``dtype`` ("float16" halves it) and its
    metadata unchanged: the loaders copy them into float32 modules."""
    with safetensors.safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    stored = {k: v.to(STORAGE[dtype]) if v.is_floating_point() else v for k, v in tensors.items()}
    overflow = first_non_finite(stored)
    if overflow:
        raise ValueError(f"{path}: {overflow} does not fit {dtype} (values beyond its range); export with dtype = \"float32\"")
    temporary = f"{path}.tmp"
    save_file(stored, temporary, metadata=metadata)
    os.replace(temporary, path)  # a crash mid-write leaves the exported file whole


def family_of(config):
    return next(name for name, cls in FAMILIES.items() if type(config) is cls)


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
        "temporal_family": family_of(layers.config),
        "unet_layout": layers.layout.to_json(),
        "temporal_config": json.dumps(layers.config.to_dict()),
        "train_frames": str(int(train_frames)),
        "modes": json.dumps(list(modes)),
        "prediction_type": prediction_type or "",
    }
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in layers.state_dict().items()}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_file(tensors, path, metadata=metadata)


def conversion_command(path):
    """The one line that turns a pickled weight file into safetensors, run where the user trusts the file."""
    stem = os.path.splitext(os.path.basename(path))[0]
    return (
        f"python -c \"import torch, safetensors.torch as st; sd = torch.load('{stem}{os.path.splitext(path)[1]}', map_location='cpu', weights_only=True); "
        f"st.save_file({{k: v.contiguous() for k, v in sd.get('state_dict', sd).items()}}, '{stem}.safetensors')\""
    )


def read_header(path):
    """The header of a temporal-layer file (file_checks.Safetensors), its tensors left unread."""
    return open_safetensors(path, DAMAGED, pickled=f"convert it to safetensors once with {conversion_command(path)}", what="temporal layers")


def load_temporal_layers(path, layout_of, ops=nn, prediction_type=None, target="MODEL") -> TemporalLayers:
    """Build the layers a file describes and load its weights, after checking
    they fit the UNet (or, with ``target`` "VAE", the decoder) whose layout for a
    placement is ``layout_of(placement)`` (unet_layout.PLACEMENTS; e.g.
    ``functools.partial(find_layout, unet)``), or is ``layout_of`` where that is a
    UNetLayout (a decoder has one placement)."""
    if isinstance(layout_of, UNetLayout):
        layout_of = (lambda layout: lambda placement: layout)(layout_of)
    header = read_header(path)
    name = header.name
    if header.metadata.get("format") == FORMAT:
        layers = _pack_layers(header, layout_of, ops, prediction_type, target)
    elif is_motion_module(header.shapes):
        if target != "MODEL":
            raise WeightFileError(f"{name} is an AnimateDiff motion module: it goes into a UNet (through Temporal UNet Patcher), not into a {target}")
        found = read_animatediff(name, header.shapes)
        layout = layout_of(found.placement)
        check_fits(name, found, layout)
        _check_prediction(name, "eps", prediction_type, "SD 1.5")
        layers = header.build(
            lambda: TemporalLayers(layout, found.config, ops=ops, train_frames=found.config.position_code_frames, modes=("keyframe",)),
            rename=lambda state: animatediff_state(state, layout),
        )
    else:
        raise WeightFileError(f"{name} is not a Video LDM temporal-layer file: {_guess_foreign(header.shapes)}")
    return layers


def _pack_layers(header, layout_of, ops, prediction_type, target):
    """Fresh layers as the pack's own file describes them, checked to fit the
    target, and their shapes checked against the file's before they exist."""
    version = header.integer("format_version")
    if version > FORMAT_VERSION:
        raise header.refuse(f"has format version {version}, this pack reads up to {FORMAT_VERSION}", "update the pack")
    file_layout = UNetLayout.from_values(header.json("unet_layout"), header.refuse)
    mismatch = file_layout.mismatch(layout_of(file_layout.placement), target)
    if mismatch:
        family = layout_of("videoldm").family
        raise WeightFileError(f"temporal layers in {header.name} were {mismatch}. Pick a temporal-layer file trained for {family}, or load the {target} they were trained on.")
    _check_prediction(header.name, header.prediction_type(), prediction_type, file_layout.family)
    family = header.metadata.get("temporal_family", "videoldm")
    if family not in FAMILIES:
        raise header.refuse(f"holds layers of family {family[:40]!r}; this pack knows {sorted(FAMILIES)}", "update the pack")
    config = config_from(FAMILIES[family], header.json("temporal_config"), header.refuse)
    modes = header.json("modes", list)
    if not modes or not set(modes) <= set(MODES):
        raise header.refuse(f"has modes {str(modes)[:60]}; temporal layers serve one or more of {MODES}")
    train_frames = header.integer("train_frames", high=MAX_FRAMES)
    return header.build(lambda: TemporalLayers(file_layout, config, ops=ops, train_frames=train_frames, modes=modes))


def _check_prediction(name, trained_for, prediction_type, family):
    if trained_for and prediction_type and trained_for != prediction_type:
        raise WeightFileError(
            f"temporal layers in {name} were trained on a {trained_for}-prediction model, this MODEL predicts {prediction_type}: "
            f"use a {trained_for}-prediction checkpoint of {family}, or layers trained for {prediction_type}."
        )


def _guess_foreign(shapes):
    keys = list(shapes)
    if any("time_stack" in k or "time_mixer" in k for k in keys):
        return "it looks like a Stable Video Diffusion checkpoint (load it with ComfyUI's checkpoint loader)"
    if any(k.startswith(("model.diffusion_model.", "input_blocks.", "first_stage_model.")) for k in keys):
        return "it looks like a Stable Diffusion checkpoint (load it with ComfyUI's checkpoint loader)"
    return f"its metadata lacks format='{FORMAT}' and it is no AnimateDiff motion module; train or export temporal layers with this pack, or use {SUPPORTED}"


# --------------------------------------------------------------- AnimateDiff

MODULE_KEY = re.compile(r"^((?:down_blocks|up_blocks)\.\d+|mid_block)\.motion_modules\.(\d+)\.temporal_transformer\.(.+)$")
# AnimateDiff's names inside a module -> motion_module.MotionModule's: AnimateDiff's
# diffusers-era modules wrap to_out in a list with a dropout, and the feed-forward in `net`
RENAMES = ((".to_out.0.", ".to_out."), (".pos_encoder.pe", ".pe"), ("ff.net.0.", "ff.0."), ("ff.net.2.", "ff.1."))
SUPPORTED = "AnimateDiff motion modules for SD 1.5 (v1: mm_sd_v14 / mm_sd_v15, v2: mm_sd_v15_v2, v3: v3_sd15_mm)"


@dataclass(frozen=True)
class AnimateDiffFile:
    """What an AnimateDiff file's keys and shapes say of it."""

    config: MotionModuleConfig
    placement: str  # motion_modules, or motion_modules_mid where it has a middle-block module
    channels: dict  # module name ("down_blocks.0.motion_modules.1") -> channels


def is_motion_module(shapes):
    return any(".motion_modules." in k or ".temporal_attentions." in k for k in shapes)


def _other_motion_model(shapes):
    """What a motion-model file is where it is one this pack does not run, or None."""
    keys = list(shapes)
    if any(".temporal_attentions." in k for k in keys):
        return "a HotShot-XL motion model (for SDXL)"
    if any("lora" in k.lower() for k in keys):
        return "a MotionLoRA (LoRA weights applied on top of a motion module)"
    if "conv_in.weight" in shapes:
        return "a PIA motion module (image animation, with an input convolution of its own)"
    if "FancyVideo" in shapes or any(k.startswith(("fps_embedding.", "motion_embedding.")) for k in keys):
        return "a FancyVideo motion module"
    if any(k.startswith("img_encoder.") for k in keys):
        return "an AnimateLCM-I2V motion module"
    if any(".pos_embed." in k for k in keys):
        return "a HelloMeme motion module"
    if not any(k.endswith(".pos_encoder.pe") for k in keys):
        return "an AnimateLCM-style motion module (no position code)"
    down_blocks = {k.split(".")[1] for k in keys if k.startswith("down_blocks.")}
    if len(down_blocks) == 3 and shapes.get("down_blocks.2.motion_modules.0.temporal_transformer.norm.weight") == (1280,):
        return "an AnimateDiff-SDXL motion module (for SDXL)"
    return None


def read_animatediff(name, shapes):
    """The variant, config and module channels of an AnimateDiff motion-module
    file, from its tensor shapes (``key -> shape``); a WeightFileError naming what
    the file is where this pack does not run it. The tensors themselves are
    checked later, against the layers built from what this returns."""
    other = _other_motion_model(shapes)
    if other:
        raise WeightFileError(f"{name} is {other}: this pack runs {SUPPORTED}. Use that file with AnimateDiff-Evolved, or pick one of these")
    modules, foreign = {}, []
    for key, shape in shapes.items():
        match = MODULE_KEY.match(key)
        if match:
            modules.setdefault(f"{match[1]}.motion_modules.{match[2]}", {})[match[3]] = shape
        else:
            foreign.append(key)
    if foreign:
        raise WeightFileError(f"{name} holds {len(foreign)} tensors that are not motion-module weights (e.g. {foreign[:3]}): it is not a plain AnimateDiff motion module. This pack runs {SUPPORTED}")
    broken = [module for module, parts in modules.items() if len(parts.get("norm.weight", ())) != 1 or len(parts.get("transformer_blocks.0.ff.net.2.weight", ())) != 2]
    code_lengths = {shape[1] if len(shape) == 3 else 0 for parts in modules.values() for part, shape in parts.items() if part.endswith(".pos_encoder.pe")}
    if broken or len(code_lengths) != 1 or 0 in code_lengths:
        raise WeightFileError(f"{name} is an incomplete or edited motion module ({f'{broken[:3]} lack their norm or feed-forward' if broken else 'its position codes differ'}): download it again")
    channels = {module: parts["norm.weight"][0] for module, parts in modules.items()}
    some = next(iter(modules.values()))
    length = code_lengths.pop()
    mid = "mid_block.motion_modules.0" in modules
    version = "v2" if mid else "v3" if length == 32 else "v1"  # as AnimateDiff-Evolved tells them apart
    config = MotionModuleConfig(
        transformer_blocks=len({part.split(".")[1] for part in some if part.startswith("transformer_blocks.")}),
        attention_blocks=len({part.split(".")[3] for part in some if ".attention_blocks." in part}),
        position_code_frames=length,
        ff_mult=some["transformer_blocks.0.ff.net.2.weight"][1] // max(some["norm.weight"][0], 1),
        frame_joint_norms=version == "v1",
        version=version,
    )
    return AnimateDiffFile(config, "motion_modules_mid" if mid else "motion_modules", channels)


def check_fits(name, found: AnimateDiffFile, layout):
    """Refuse a motion-module file whose modules do not sit on ``layout``'s motion
    sites with the same channels, naming both sides."""
    if layout.family != "SD1.x":
        raise WeightFileError(f"{name} is an AnimateDiff {found.config.version} motion module for SD 1.5; this MODEL is {layout.describe()}: load an SD 1.5 checkpoint")
    sites = {site.motion_module: site for site in layout.sites}
    missing, extra = sorted(set(sites) - set(found.channels)), sorted(set(found.channels) - set(sites))
    if missing or extra:
        raise WeightFileError(
            f"{name}'s motion modules do not match this MODEL's UNet blocks (the file lacks {missing[:3]} and has no place for {extra[:3]}): "
            "it was built for another UNet, or the file is damaged; use a motion module for this SD 1.5 UNet"
        )
    for module, channels in found.channels.items():
        if channels != sites[module].channels:
            raise WeightFileError(f"{name}'s {module} has {channels} channels; this MODEL's UNet has {sites[module].channels} at {sites[module].path}: the module was built for another UNet")


def animatediff_state(state, layout):
    """An AnimateDiff state dict under the keys of ``layout``'s TemporalLayers."""
    sites = {site.motion_module: site for site in layout.sites}
    renamed = {}
    for key, tensor in state.items():
        match = MODULE_KEY.match(key)
        part = f".{match[3]}"
        for old, new in RENAMES:
            part = part.replace(old, new)
        renamed[f"layers.{sites[f'{match[1]}.motion_modules.{match[2]}'].key}{part}"] = tensor
    return renamed
