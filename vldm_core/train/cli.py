"""``python -m vldm_core.train CONFIG.toml [--resume]``: one training job from a config file.

A config names the job, its frozen base models, the temporal-layer settings,
the videos, the loop settings and where the weight file for the nodes goes.
Every key is checked before any model is loaded or any video is read; the
exported file is never written over.

    [job]
    kind = "temporal_layers"          # temporal layers of a UNet; "upscaler" (an x4-upscaler-style UNet with its
                                      # VAE: trains on the clips and their 4x smaller versions); or
                                      # "temporal_decoder" (needs only an autoencoder). The image stage, for the
                                      # pack's own models, from scratch: "autoencoder", "image" (UNet and caption
                                      # encoder on single frames), "image_upscaler" (an x4-upscaler-style UNet)
    modes = ["keyframe"]              # and/or "prediction", "interpolation" (need context_latent_channels)
    stages = [0, 1]                   # interpolation stages, where [layers] interpolation_stage = true
    adversarial_weight = 0.1          # temporal_decoder: weight of the 3D patch discriminator's loss
    patch = 0                         # upscaler, image_upscaler: random patches of this many latent pixels (0: whole frames)
    kl_weight = 1e-6                  # autoencoder: weight of the KL term
    perceptual_weights = ""           # temporal_decoder, autoencoder: LPIPS (VGG) weights as safetensors, for a perceptual loss
    perceptual_weight = 1.0           #   (vldm_core.train.perceptual says how to convert the lpips package's weights)
    caption_dropout = 0.1             # image, temporal_layers: share of empty captions (classifier-free guidance)
    timestep_power = 1.0              # temporal_layers: t / T drawn with density p (t / T)^(p - 1); above 1 favours the
                                      # high noise where a video's layout is decided (1: uniform, as the image model)
    prediction_type = "eps"           # image, image_upscaler: what the new UNet predicts ("eps" or "v")

    [model.unet]                      # image, image_upscaler: vldm_core.unet.UNetConfig of the new UNet
    model_channels = 64               # (and [model.text_encoder], [model.autoencoder] likewise)

    [base]                            # an SD checkpoint, loaded with ComfyUI's own loaders:
    checkpoint = "ComfyUI/models/checkpoints/v1-5-pruned-emaonly.safetensors"
    comfyui = ""                      # ComfyUI's folder; default: importable, $COMFYUI_PATH, or the one this pack is installed in
    # or the pack's own model files (vldm_core.model_files), as the bundled model is trained:
    # unet = "models/unet.safetensors"
    # text_encoder = "models/text_encoder.safetensors"
    # autoencoder = "models/autoencoder.safetensors"
    # temporal_decoder jobs: autoencoder, checkpoint (its VAE) or vae = "vae-ft-mse-840000-ema-pruned.safetensors"
    # autoencoder jobs: nothing (from scratch, [model.autoencoder]), or autoencoder = a file to fine-tune
    # image jobs: autoencoder; to fine-tune (train longer) an exported image model, unet and text_encoder too
    # (unet alone: the UNet learns with a new caption encoder from [model.text_encoder])

    [layers]                          # vldm_core.temporal.TemporalConfig
    context_latent_channels = 0
    init = ""                         # temporal_layers: an AnimateDiff motion module (.safetensors) to start from: it stays
                                      # frozen and only its context branch trains (context_latent_channels, interpolation_stage)
    start = ""                        # temporal_layers: or a temporal-layer file of this pack's to train on, all of it (e.g. on
                                      # a base trained further); it brings its own settings, so [layers] takes nothing else

    [data]
    videos = "videos/"                # a folder of captioned videos (vldm_core.train.data)
    world = 0                         # or this many scenes of the synthetic shapes world (vldm_core.world) instead
    frames = 8
    fps = 8.0
    size = [64, 64]                   # height, width
    latent_cache = ""                 # a folder: encode the clips once and reuse them

    [train]                           # vldm_core.train.loop.TrainConfig
    output_dir = "runs/keyframe"
    steps = 1000
    batch_size = 8

    [export]
    path = "temporal_layers/keyframe.safetensors"
    ema = true                        # the EMA weights (needs train.ema_decay > 0)
    text_encoder = ""                 # image: where the caption encoder goes (path takes the UNet)
    dtype = "float32"                 # or "float16": half the file size (the weights load as float32)
"""

import argparse
import hashlib
import os
import tomllib
import warnings
from dataclasses import fields
from functools import partial

import torch

from ..autoencoder import COMFY_VAE_GROUPS, scaled_encoder
from ..file_checks import DataFileError, config_from, is_number, is_whole
from ..model_files import KINDS, load_model, save_model
from ..temporal import TemporalConfig, TemporalLayers, with_context_branch
from ..unet_layout import find_layout
from ..weights import MAX_FRAMES, STORAGE, load_temporal_layers, save_temporal_layers, store_as
from ..temporal_decoder import fresh_temporal_decoder
from ..world import WorldClips
from .data import LatentCache, LatentClips, VideoClips
from .decoder_job import TemporalDecoderJob, export_temporal_decoder
from .discriminator import VideoDiscriminator
from .comfy_base import CheckpointBase, load_checkpoint, load_vae  # ComfyUI is imported only when they load a file
from .image_jobs import AutoencoderJob, ImageDiffusionJob, export_autoencoder, export_image_model, latent_scale
from .jobs import TemporalLayersJob, call_own_unet
from .upscaler_job import UpscalerJob, export_upscaler_layers
from .perceptual import load_lpips
from .loop import TrainConfig, default_device, load_checkpoint_weights, train

SECTIONS = {
    "job": {
        "kind": "temporal_layers", "modes": ["keyframe"], "stages": [0, 1], "adversarial_weight": 0.1, "patch": 0,
        "kl_weight": 1e-6, "caption_dropout": 0.1, "timestep_power": 1.0, "prediction_type": "eps", "perceptual_weights": "", "perceptual_weight": 1.0,
    },
    "base": {"checkpoint": "", "comfyui": "", "unet": "", "text_encoder": "", "autoencoder": "", "vae": ""},
    "model": {"unet": {}, "text_encoder": {}, "autoencoder": {}},  # configs of models trained from scratch
    "layers": {**{f.name: f.default for f in fields(TemporalConfig)}, "init": "", "start": ""},
    "data": {"videos": "", "world": 0, "frames": None, "fps": None, "size": None, "latent_cache": ""},
    "train": None,  # TrainConfig checks its own keys
    "export": {"path": None, "ema": True, "text_encoder": "", "dtype": "float32"},
}
# what each job kind needs in [base]: the pack's own model files, or one of the other files
BASES = {
    "temporal_layers": ({"unet", "text_encoder", "autoencoder"}, ("checkpoint",)),
    "upscaler": ({"unet", "text_encoder", "autoencoder"}, ("checkpoint",)),
    "temporal_decoder": ({"autoencoder"}, ("checkpoint", "vae")),
    "autoencoder": (set(), ()),  # or STARTS_FROM
    "image": ({"autoencoder"}, ()),
    "image_upscaler": ({"autoencoder", "text_encoder"}, ()),
}
JOBS = tuple(BASES)
# jobs that may start from trained files instead of from scratch (fine-tuning: longer, or at another frame size)
STARTS_FROM = {"autoencoder": ("autoencoder",), "image": ("unet", "text_encoder")}
SCALE_SAMPLE = 32  # clips whose frames measure a new autoencoder's latent scale


def read_config(path):
    """The TOML file at ``path`` as a table, or a DataFileError naming what keeps it from being one."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise DataFileError(f"{os.path.basename(path)} is not a TOML file ({e}): fix that line (a copy of a config in configs/ shows the format)") from None


def type_problems(name, defaults, given):
    """Values of section ``name`` whose type is not that of their default (a whole number serves for a float)."""
    problems = []
    for key, value in given.items():
        default = defaults.get(key)
        if default is None or isinstance(default, dict):
            continue
        fits = is_number(value) if type(default) is float else type(value) is type(default)
        if not fits:
            problems.append(f"{name}.{key} = {str(value)[:40]!r} is not a {type(default).__name__}, as its default {default!r} is")
    return problems


def data_problems(data):
    """[data]'s frames, fps and size: what a clip is."""
    frames, fps, size, world = data.get("frames"), data.get("fps"), data.get("size"), data.get("world", 0)
    problems = []
    if frames is not None and not (is_whole(frames) and 1 <= frames <= MAX_FRAMES):
        problems.append(f"data.frames = {str(frames)[:20]!r}: a whole number of frames per clip, 1 to {MAX_FRAMES}")
    if fps is not None and not (is_number(fps) and 0 < fps <= 1000):
        problems.append(f"data.fps = {str(fps)[:20]!r}: frames a second, above 0 and at most 1000")
    if size is not None and not (isinstance(size, list) and len(size) == 2 and all(is_whole(side) and 8 <= side <= 8192 for side in size)):
        problems.append(f"data.size = {str(size)[:30]!r}: [height, width] in pixels, 8 to 8192 each")
    if not (is_whole(world) and world >= 0):
        problems.append(f"data.world = {str(world)[:20]!r}: a number of synthetic scenes")
    return problems


def config_problems(name, cls, values):
    """What keeps ``values`` from being a ``cls`` config (file_checks.config_from), as a list."""
    try:
        config_from(cls, values, lambda problem: ValueError(f"[{name}] {problem}"))
    except ValueError as e:
        return [str(e)]
    return []


def check_config(config):
    """Every section and key known, every required value given: a ValueError naming each problem and the known keys."""
    problems = [f"unknown section [{name}] (known: {', '.join(SECTIONS)})" for name in config if name not in SECTIONS]
    for name, defaults in SECTIONS.items():
        given = config.get(name, {})
        if defaults is None:
            continue
        problems += [f"unknown key {name}.{key} (known: {', '.join(defaults)})" for key in given if key not in defaults]
        problems += [f"{name}.{key} is required" for key, default in defaults.items() if default is None and key not in given]
        problems += type_problems(name, defaults, {key: value for key, value in given.items() if key in defaults})
    problems += data_problems(config.get("data", {}))
    layers = {key: value for key, value in config.get("layers", {}).items() if key not in STARTS}
    problems += config_problems("layers", TemporalConfig, layers) if set(layers) <= set(SECTIONS["layers"]) else []
    kind = config.get("job", {}).get("kind", "temporal_layers")
    if kind not in JOBS:
        problems.append(f"job.kind {kind!r}: choose one of {', '.join(JOBS)}")
    else:
        problems += base_problems(kind, {key for key, value in config.get("base", {}).items() if value})
    for name, values in config.get("model", {}).items():
        known = [f.name for f in fields(KINDS[name][1])] if name in KINDS else []
        problems += [f"unknown key model.{name}.{key} (known: {', '.join(known)})" for key in values if key not in known]
        problems += config_problems(f"model.{name}", KINDS[name][1], values) if name in KINDS and set(values) <= set(known) else []
    data = config.get("data", {})
    if bool(data.get("videos")) == bool(data.get("world")):
        problems.append("[data] takes videos (a folder of captioned videos) or world (a number of synthetic scenes, vldm_core.world), one of them")
    elif data.get("world") and data.get("latent_cache"):
        problems.append("data.latent_cache is for video folders: synthetic scenes render faster than latents load; remove it")
    for name in STARTS_FROM.get(kind, ()):
        if config.get("base", {}).get(name) and config.get("model", {}).get(name):
            problems.append(f"[model.{name}] is for models trained from scratch: base.{name} brings its own config; remove one")
    problems += init_problems(kind, config.get("layers", {}), config.get("job", {}).get("modes", SECTIONS["job"]["modes"]))
    if config.get("export", {}).get("dtype", "float32") not in STORAGE:
        problems.append(f"export.dtype {config['export']['dtype']!r}: choose one of {', '.join(STORAGE)}")
    if kind == "image" and not config.get("export", {}).get("text_encoder"):
        problems.append("export.text_encoder is required for image jobs (the caption encoder trains with the UNet)")
    if not isinstance(config.get("export", {}).get("path", ""), str):
        problems.append("export.path is the file the trained weights go to: a path in quotes")
    if problems:
        raise DataFileError("the training config has problems:\n  " + "\n  ".join(problems))
    try:
        TrainConfig.from_dict(config.get("train", {}))  # its own unknown and missing keys
    except ValueError as e:
        raise DataFileError(f"the training config has problems:\n  {e}") from None


STARTS = ("init", "start")  # the [layers] keys naming a file the layers start from, no part of their TemporalConfig
INIT_KEYS = {"init", "context_latent_channels", "interpolation_stage"}  # what [layers] sets on top of a motion module


def init_problems(kind, layers, modes):
    """layers.init is a temporal_layers job's motion module, whose context branch alone
    trains; layers.start, temporal layers of this pack's, train whole and bring their own settings."""
    if layers.get("start"):
        if kind != "temporal_layers":
            return [f"layers.start is for temporal_layers jobs (temporal layers to train on), not {kind}"]
        return [f"layers.{key} does not apply with layers.start: the file brings its own settings" for key in sorted(set(layers) - {"start"})]
    if not layers.get("init"):
        return []
    if kind != "temporal_layers":
        return [f"layers.init is for temporal_layers jobs (a motion module to add a context branch to), not {kind}"]
    problems = [f"layers.{key} does not apply with layers.init: the motion module brings its own" for key in sorted(set(layers) - INIT_KEYS)]
    if not layers.get("context_latent_channels") or "keyframe" in modes:
        problems.append("with layers.init only the context branch trains: set layers.context_latent_channels and job.modes to prediction and/or interpolation")
    return problems


def base_problems(kind, given):
    """The [base] keys a job needs: exactly one source of its frozen models, whole;
    STARTS_FROM's jobs may add the files they fine-tune: the first, and any of the
    others (those not given train from their [model.*] config)."""
    first, *others = STARTS_FROM.get(kind, (None,))
    start = set(STARTS_FROM.get(kind, ()))
    fine_tune = f"base.{first}" + "".join(f" (+ base.{key} or a new one from [model.{key}])" for key in others)
    problems = [f"fine-tuning starts from {fine_tune}: give base.{first}, or none of them to train from scratch"] if given & start and first not in given else []
    given = given - start
    own, files = BASES[kind]
    options = [f"base.{key}" for key in files] + ([" + ".join(f"base.{key}" for key in sorted(own))] if own else [])
    takes = f"{kind} jobs take " + (" or ".join(options) if options else "no base models (they train from scratch)")
    takes += f"; {fine_tune} to fine-tune" if start else ""
    problems += [f"base.{key} is not used: {takes}" for key in sorted(given - own - {*files, "comfyui"})]
    if not options:
        return problems
    sources = [f"base.{key}" for key in files if key in given] + (["the pack's own model files"] if given & own else [])
    if len(sources) != 1:
        problems.append(f"[base] needs one source of the frozen models ({' and '.join(sources) or 'none given'}): {takes}")
    elif given & own and own - given:
        problems.append(f"the pack's own model files need {', '.join(f'base.{key}' for key in sorted(own - given))} too")
    return problems


def section(config, name):
    return {**SECTIONS[name], **config.get(name, {})}


def file_hash(path):
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()[:16]


def frozen_base(config, kind, device):
    """The base UNet, caption encoder and autoencoder (frozen): a CheckpointBase
    from an SD checkpoint, or the same from the pack's own model files."""
    base = section(config, "base")
    if base["checkpoint"]:
        return load_checkpoint(base["checkpoint"], kind, device, base["comfyui"])
    unet, unet_meta = load_model(base["unet"], "unet")
    text_encoder, _ = load_model(base["text_encoder"], "text_encoder")
    autoencoder, ae_meta = load_model(base["autoencoder"], "autoencoder")
    unet, text_encoder, autoencoder = unet.to(device), text_encoder.to(device).requires_grad_(False), autoencoder.to(device).requires_grad_(False)
    return CheckpointBase(unet, text_encoder, file_encoder(autoencoder, ae_meta), unet_meta.get("prediction_type", "eps"), autoencoder, call_own_unet)


def file_encoder(autoencoder, metadata):
    """``encode_frames`` of one of the pack's autoencoder files, scaled by its latent_scale."""
    return scaled_encoder(autoencoder, float(metadata.get("latent_scale", 1.0)))


def frozen_autoencoder(config, device):
    """The autoencoder a temporal_decoder job fine-tunes the decoder of."""
    base = section(config, "base")
    if base["autoencoder"]:
        return load_model(base["autoencoder"], "autoencoder")[0].to(device)
    key = "checkpoint" if base["checkpoint"] else "vae"
    return load_vae(base[key], device, base["comfyui"], key=key)


def fresh_layer_config(config):
    """The TemporalConfig of fresh layers from [layers]."""
    return TemporalConfig(**{key: value for key, value in section(config, "layers").items() if key not in STARTS})


def temporal_layers_job(config, device):
    """Fresh temporal layers on the frozen base, (layers.start) trained ones to train
    on, or (layers.init) a frozen motion module with a fresh context branch, and the
    job that trains them; returns (job, encode_frames for the latent cache, export(path, weights))."""
    job, layer_settings = section(config, "job"), section(config, "layers")
    init, start = layer_settings.pop("init"), layer_settings.pop("start")
    base = frozen_base(config, "temporal_layers", device)
    if init:
        layers, modes = motion_module_base(init, base, layer_settings, config["data"]["frames"]), ("keyframe", *job["modes"])
    elif start:
        layers = started_layers(start, base, job["modes"], config["data"]["frames"])
        modes = layers.modes
    else:
        layers, modes = TemporalLayers(find_layout(base.unet), fresh_layer_config(config), modes=job["modes"]), job["modes"]
    trainer = TemporalLayersJob(
        base.unet, layers.to(device), base.encode_text, base.prediction_type, job["modes"], tuple(job["stages"]), base.encode_frames, base.call_unet,
        context_only=bool(init), caption_dropout=job["caption_dropout"], timestep_power=job["timestep_power"],
    )

    def export(path, weights, data):
        trainer.module.load_state_dict(weights)
        save_temporal_layers(trainer.layers, path, train_frames=config["data"]["frames"], modes=modes, prediction_type=base.prediction_type)

    return trainer, base.encode_frames, export


def started_layers(path, base, modes, frames):
    """The temporal layers at ``path`` on the base UNet, to train on in ``modes`` with clips of ``frames``."""
    layers = load_temporal_layers(path, partial(find_layout, base.unet), prediction_type=base.prediction_type).train()
    name = os.path.basename(path)
    if not set(modes) <= set(layers.modes):
        raise DataFileError(f"{name} was trained for {', '.join(layers.modes)}, not {', '.join(sorted(set(modes) - set(layers.modes)))}: set job.modes to those, or train fresh layers")
    if frames != layers.train_frames:
        raise DataFileError(f"{name} was trained on {layers.train_frames} frames (the sampler's window): set data.frames = {layers.train_frames}")
    return layers


def motion_module_base(path, base, layer_settings, frames):
    """The motion module at ``path`` on the base UNet, with a fresh context branch."""
    module = load_temporal_layers(path, partial(find_layout, base.unet), prediction_type=base.prediction_type)
    if frames > module.train_frames:
        raise ValueError(f"data.frames {frames} is more than {os.path.basename(path)} takes ({module.train_frames}, its position code): train on at most {module.train_frames}")
    return with_context_branch(module, layer_settings["context_latent_channels"], layer_settings["interpolation_stage"])


def upscaler_job(config, device):
    """Fresh temporal layers on a frozen x4-upscaler-style UNet; the clips are its
    high-res targets, their 4x area-downsampled frames its low-res input."""
    base = frozen_base(config, "upscaler", device)
    layers = TemporalLayers(find_layout(base.unet), fresh_layer_config(config), modes=("upscaler",)).to(device)
    patch = section(config, "job")["patch"] or None
    trainer = UpscalerJob(base.unet, layers, base.encode_text, base.prediction_type, patch=patch, encode_frames=base.encode_frames, call_unet=base.call_unet)

    def export(path, weights, data):
        export_upscaler_layers(trainer, path, train_frames=config["data"]["frames"], weights=weights)

    return trainer, None, export


def temporal_decoder_job(config, device):
    """The frozen autoencoder, fresh temporal blocks for its decoder and a 3D patch discriminator."""
    autoencoder = frozen_autoencoder(config, device)
    temporal = fresh_temporal_decoder(autoencoder.decoder, fresh_layer_config(config)).to(device)
    job = section(config, "job")
    trainer = TemporalDecoderJob(autoencoder, temporal, VideoDiscriminator().to(device), adversarial_weight=job["adversarial_weight"], **perceptual(job, device))

    def export(path, weights, data):
        export_temporal_decoder(trainer, path, train_frames=config["data"]["frames"], weights=weights)

    return trainer, None, export


def perceptual(job, device):
    """The perceptual-loss arguments of a reconstruction job: LPIPS where job.perceptual_weights names its file."""
    if not job["perceptual_weights"]:
        return {}
    return {"perceptual": load_lpips(job["perceptual_weights"]).to(device), "perceptual_weight": job["perceptual_weight"]}


def fresh_model(config, name):
    """A model trained from scratch, built from its [model.NAME] config (seeded by train.seed)."""
    cls, config_cls = KINDS[name]
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in config.get("model", {}).get(name, {}).items()}
    torch.manual_seed(config["train"].get("seed", 0))
    return cls(config_cls(**values))


def autoencoder_job(config, device):
    """The image autoencoder, from scratch or fine-tuned from base.autoencoder; its
    export carries the latent scale measured on the training clips."""
    job, start = section(config, "job"), section(config, "base")["autoencoder"]

    def model():
        return load_model(start, "autoencoder")[0].train() if start else fresh_model(config, "autoencoder")

    autoencoder = model()
    if autoencoder.config.norm_groups != COMFY_VAE_GROUPS:
        warnings.warn(
            f"the autoencoder has norm_groups = {autoencoder.config.norm_groups}: ComfyUI's VAE always has {COMFY_VAE_GROUPS} GroupNorm groups, so the "
            "bundle loader nodes will refuse this autoencoder (the demo and pipeline run it); set norm_groups = 32 to use it in ComfyUI"
        )
    trainer = AutoencoderJob(autoencoder.to(device), kl_weight=job["kl_weight"], **perceptual(job, device))

    def export(path, weights, data):
        trained = model().to(device)
        trained.load_state_dict(weights)
        sample = torch.cat([data[i]["pixels"] for i in range(min(len(data), SCALE_SAMPLE))])
        export_autoencoder(trained, path, latent_scale(trained, sample.to(device)))

    return trainer, None, export


def image_job(config, device):
    """The image LDM (UNet and caption encoder) on single frames, the autoencoder frozen:
    from scratch, or fine-tuned from base.unet and base.text_encoder (an exported
    image model trained on, when its training checkpoint is gone); base.unet alone
    gives it a new caption encoder, from [model.text_encoder]."""
    job, base = section(config, "job"), section(config, "base")
    autoencoder, metadata = load_model(base["autoencoder"], "autoencoder")
    encode_frames = file_encoder(autoencoder.to(device).requires_grad_(False), metadata)
    if base["unet"]:
        unet, unet_meta = load_model(base["unet"], "unet")
        text_encoder = load_model(base["text_encoder"], "text_encoder")[0] if base["text_encoder"] else fresh_model(config, "text_encoder")
        predicts = unet_meta.get("prediction_type") or job["prediction_type"]
        if predicts != job["prediction_type"]:
            raise DataFileError(f"{base['unet']} predicts {predicts!r}, the job {job['prediction_type']!r}: set job.prediction_type = {predicts!r} to fine-tune it")
        unet, text_encoder = unet.train().to(device), text_encoder.train().to(device)
    else:
        unet, text_encoder = fresh_model(config, "unet").to(device), fresh_model(config, "text_encoder").to(device)
    trainer = ImageDiffusionJob(unet, text_encoder, job["prediction_type"], job["caption_dropout"], encode_frames)

    def export(path, weights, data):
        export_image_model(trainer, path, config["export"]["text_encoder"], weights=weights)

    return trainer, encode_frames, export


def image_upscaler_job(config, device):
    """An x4-upscaler-style UNet from scratch on single frames and their 4x smaller selves."""
    base = section(config, "base")
    autoencoder, metadata = load_model(base["autoencoder"], "autoencoder")
    text_encoder, _ = load_model(base["text_encoder"], "text_encoder")
    encode_frames = file_encoder(autoencoder.to(device).requires_grad_(False), metadata)
    job = section(config, "job")
    unet = fresh_model(config, "unet").to(device)
    trainer = UpscalerJob(unet, None, text_encoder.to(device).requires_grad_(False), job["prediction_type"], patch=job["patch"] or None, encode_frames=encode_frames)

    def export(path, weights, data):
        trained = fresh_model(config, "unet")
        trained.load_state_dict(weights)
        save_model(trained, path, prediction_type=job["prediction_type"])

    return trainer, None, export


def dataset(config, encode_frames):
    """The videos as clips, or synthetic scenes; through a latent cache where one is set and the job trains on latents."""
    data = section(config, "data")
    seed = config.get("train", {}).get("seed", 0)
    if data["world"]:
        return WorldClips(data["world"], data["frames"], data["fps"], tuple(data["size"]), seed=seed)
    clips = VideoClips(data["videos"], data["frames"], data["fps"], tuple(data["size"]), seed=seed)
    print(clips.summary())
    if not data["latent_cache"] or encode_frames is None:
        return clips
    source = "checkpoint" if config["base"].get("checkpoint") else "autoencoder"
    encoder = f"{source}:{file_hash(config['base'][source])}"  # a cache built with other weights is not reused
    cache = LatentCache(data["latent_cache"], {**clips.settings(), "encoder": encoder})
    cache.encode_all(clips, encode_frames)
    return LatentClips(cache)


def run(config, resume=False):
    """Check, build, train, export; returns the exported file's path."""
    check_config(config)
    target = config["export"]["path"]
    for key in ("path", "text_encoder"):
        if config["export"].get(key) and os.path.exists(config["export"][key]):
            raise FileExistsError(f"export.{key} {config['export'][key]} exists: choose another name (trained files are never written over)")
    device = default_device()
    build = {
        "temporal_layers": temporal_layers_job, "upscaler": upscaler_job, "temporal_decoder": temporal_decoder_job,
        "autoencoder": autoencoder_job, "image": image_job, "image_upscaler": image_upscaler_job,
    }[section(config, "job")["kind"]]
    job, encode_frames, export = build(config, device)
    data = dataset(config, encode_frames)
    result = train(job, data, TrainConfig.from_dict(config["train"]), resume=resume)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, rank 0 alone writes, as it alone checkpoints
        settings = section(config, "export")
        use_ema = settings["ema"] and config["train"].get("ema_decay", 0) > 0
        export(target, load_checkpoint_weights(result.checkpoint, ema=use_ema), data)
        if settings["dtype"] != "float32":
            for path in filter(None, (target, settings["text_encoder"])):
                store_as(path, settings["dtype"])
    return target


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m vldm_core.train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="a TOML file as above")
    parser.add_argument("--resume", action="store_true", help="go on from output_dir's checkpoint (the same config, more steps allowed)")
    args = parser.parse_args(argv)
    path = run(read_config(args.config), resume=args.resume)
    print(f"wrote {path}")
