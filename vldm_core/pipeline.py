"""The whole Video LDM without ComfyUI (the demo command, the reproduction
table): key frames -> masked-prediction rollout -> 4x (or 16x) interpolation
-> temporal decode -> 4x video upscale (paper, Fig. 2 and Sec. 3).

A model bundle is a folder of the pack's own model files and temporal-layer
files with a ``bundle.json`` naming them. The image UNet is shared by the
three latent stages, each with its own temporal layers swapped in; the
upscaler is a second UNet with its own (f4) autoencoder.
"""

import json
import math
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial

import torch

from .masking import interpolated_length, interpolation_windows, keys_per_window
from .model_files import load_model
from .rollout import interpolate, predict_segments
from .sampling import Denoiser, alphas_cumprod, discrete_sigmas, sample_guided, window_sampler
from .temporal_decoder import decode_frames, decode_video, find_decoder_layout
from .train.upscaler_job import MAX_NOISE_LEVEL, X4_SCHEDULE, augment_low_res
from .unet_layout import eject, find_layout, inject
from .file_checks import WeightFileError, is_number, is_whole, read_json
from .weights import load_temporal_layers
from .windows import map_video, spans

BUNDLE = "bundle.json"
FORMAT = "vldm.bundle"


@dataclass
class Autoencoder:
    """An autoencoder and the factor that scales its latents to what its UNet sees."""

    module: torch.nn.Module
    scale: float

    def decode(self, latents, temporal=None, frames=None):
        z = self.module.post_quant_conv(latents / self.scale)
        return decode_frames(self.module.decoder, z, temporal, frames)


@dataclass
class Upscaler:
    unet: torch.nn.Module
    autoencoder: Autoencoder
    layers: object  # TemporalLayers or None (frame by frame)
    prediction_type: str = "v"


@dataclass
class VideoLDM:
    text_encoder: torch.nn.Module
    unet: torch.nn.Module
    autoencoder: Autoencoder
    prediction_type: str
    key_frame_rate: float
    frame_size: tuple  # (height, width) in pixels, as trained
    keyframe: object  # TemporalLayers of each stage
    prediction: object = None
    interpolation: object = None
    temporal_decoder: object = None
    upscaler: Upscaler = None

    @property
    def device(self):
        return next(self.unet.parameters()).device

    @property
    def latent_size(self):
        """(height, width) of the latents of a frame_size frame."""
        return tuple(side // self.autoencoder.module.config.downsampling for side in self.frame_size)


@dataclass
class Settings:
    """How one video is made; the defaults are the demo's."""

    seconds: float = 10.0
    seed: int = 0
    steps: int = 20
    cfg: float = 5.0
    context_scale: float = 1.5  # context guidance of prediction and interpolation (1: none)
    context_frames: int = 2  # frames each rollout segment continues from
    interpolation: int = 4  # 1 (key frames only), 4 or 16
    decode_overlap: int = 2
    upscale: bool = True
    upscale_steps: int = 10
    upscale_cfg: float = 3.0
    noise_augmentation: float = 0.1

    def __post_init__(self):
        if self.interpolation not in (1, 4, 16):
            raise ValueError(f"interpolation {self.interpolation}: choose 1 (key frames only), 4 or 16")
        if self.seconds <= 0:
            raise ValueError(f"seconds {self.seconds}: ask for a positive length")


MAX_KEY_FRAME_RATE = 240.0
MAX_FRAME_SIDE = 4096
REQUIRED_PARTS = ("text_encoder", "autoencoder", "unet", "keyframe")
PARTS = (
    "text_encoder", "autoencoder", "unet", "keyframe", "prediction", "interpolation", "temporal_decoder",
    "upscaler_unet", "upscaler_autoencoder", "upscaler_layers",
)


def write_bundle(folder, files, key_frame_rate, frame_size):
    """``bundle.json`` for model files already in ``folder``: ``files`` maps each
    of PARTS to its file name, relative to the folder (keyframe and prediction,
    or prediction and interpolation, may name one file)."""
    missing = [name for name in REQUIRED_PARTS if name not in files]
    if missing:
        raise ValueError(f"a bundle needs at least {', '.join(missing)}")
    bundle = {"format": FORMAT, "key_frame_rate": key_frame_rate, "frame_size": list(frame_size), "files": files}
    with open(os.path.join(folder, BUNDLE), "w") as f:
        json.dump(bundle, f, indent=2)


def bundle_problem(bundle):
    """What is wrong with bundle.json's fields, in words, or None."""
    rate, size, files = bundle.get("key_frame_rate"), bundle.get("frame_size"), bundle["files"]
    if not (is_number(rate) and 0 < rate <= MAX_KEY_FRAME_RATE):
        return f"has key_frame_rate {str(rate)[:20]!r}; it is frames a second, above 0 and at most {MAX_KEY_FRAME_RATE}"
    if not (isinstance(size, list) and len(size) == 2 and all(is_whole(side) and 8 <= side <= MAX_FRAME_SIDE for side in size)):
        return f"has frame_size {str(size)[:30]!r}; it is [height, width] in pixels, 8 to {MAX_FRAME_SIDE} each"
    unknown = sorted(set(files) - set(PARTS))
    if unknown:
        return f"names parts {unknown[:3]} this pack does not know (its parts: {', '.join(PARTS)})"
    missing = [part for part in REQUIRED_PARTS if part not in files]
    if missing:
        return f"lacks the files of {', '.join(missing)}"
    if not all(isinstance(file, str) for file in files.values()):
        return "names a file by something other than a path"
    return None


def read_bundle(folder, name=None):
    """(bundle.json's contents, {part: absolute path}) of a bundle folder, checked
    to be a bundle whose files all lie inside it; ``name`` is how messages call it."""
    name = name or folder
    path = os.path.join(folder, BUNDLE)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"the folder {name!r} ({folder}) has no {BUNDLE}: a Video LDM bundle is a folder holding its {BUNDLE} and the model files it names; "
            "copy the whole bundle folder again (an SD checkpoint goes in models/checkpoints and loads with Load Checkpoint)"
        )
    bundle = read_json(path, "copy the bundle folder again", WeightFileError)
    if not isinstance(bundle, dict) or bundle.get("format") != FORMAT or not isinstance(bundle.get("files"), dict):
        found = bundle.get("format") if isinstance(bundle, dict) else None
        raise WeightFileError(f"{name}/{BUNDLE} is not a Video LDM model bundle (format {found!r}, expected {FORMAT!r} with a 'files' table): copy the bundle folder again")
    problem = bundle_problem(bundle)
    if problem:
        raise WeightFileError(f"{name}/{BUNDLE} {problem}: copy the bundle folder again, or write it with python -m vldm_core bundle")
    root = os.path.normpath(folder)
    files = {}
    for part, file in bundle["files"].items():
        full = os.path.normpath(os.path.join(root, str(file)))
        if not full.startswith(root + os.sep):
            raise WeightFileError(f"{name}/{BUNDLE} names {part} file {file!r} outside the bundle folder: a bundle keeps all its files inside its folder")
        files[part] = full
    return bundle, files


def load_bundle(folder, device="cpu"):
    """A VideoLDM from a bundle folder; each stage's files are checked against the models they patch."""
    bundle, files = read_bundle(folder)

    def model(name, kind):
        module, metadata = load_model(files[name], kind)
        return module.to(device).requires_grad_(False), metadata

    unet, unet_meta = model("unet", "unet")
    prediction_type = unet_meta.get("prediction_type", "eps")
    ae, ae_meta = model("autoencoder", "autoencoder")
    layout = partial(find_layout, unet)

    def layers(name, layout=layout, target="MODEL", prediction_type=prediction_type):
        if name not in files:
            return None
        return load_temporal_layers(files[name], layout, prediction_type=prediction_type, target=target).to(device).requires_grad_(False).eval()

    upscaler = None
    if "upscaler_unet" in files:
        up_unet, up_meta = model("upscaler_unet", "unet")
        up_ae, up_ae_meta = model("upscaler_autoencoder", "autoencoder")
        up_type = up_meta.get("prediction_type", "v")
        upscaler = Upscaler(up_unet, Autoencoder(up_ae, float(up_ae_meta.get("latent_scale", 1.0))), layers("upscaler_layers", partial(find_layout, up_unet), prediction_type=up_type), up_type)
    return VideoLDM(
        text_encoder=model("text_encoder", "text_encoder")[0],
        unet=unet,
        autoencoder=Autoencoder(ae, float(ae_meta.get("latent_scale", 1.0))),
        prediction_type=prediction_type,
        key_frame_rate=float(bundle["key_frame_rate"]),
        frame_size=tuple(bundle["frame_size"]),
        keyframe=layers("keyframe"),
        prediction=layers("prediction"),
        interpolation=layers("interpolation"),
        temporal_decoder=layers("temporal_decoder", find_decoder_layout(ae.decoder), target="VAE", prediction_type=None),
        upscaler=upscaler,
    )


@contextmanager
def patched(unet, layers):
    """``unet`` running ``layers`` (or frame by frame with None) for the duration."""
    eject(unet)
    if layers is not None:
        inject(unet, layers)
    try:
        yield unet
    finally:
        eject(unet)


def key_frame_count(settings, key_frame_rate):
    """Key frames whose interpolated video lasts at least ``settings.seconds``."""
    return max(2, math.ceil(settings.seconds * key_frame_rate) + 1)


@dataclass
class Plan:
    """What each stage will do, known before anything runs: frame counts and the denoising steps of the progress bar."""

    key_frames: int
    first_window: int
    segments: int
    frames: int  # after interpolation
    frame_rate: float
    steps: dict = field(default_factory=dict)

    @property
    def total_steps(self):
        return sum(self.steps.values())


def plan(model, settings):
    keys = key_frame_count(settings, model.key_frame_rate)
    first = min(keys, model.keyframe.train_frames)
    segments = 0
    if keys > first:
        if model.prediction is None:
            raise ValueError(f"{keys} key frames need a prediction model beyond the key-frame model's {first}: this bundle has none; ask for fewer seconds")
        new_per_segment = model.prediction.train_frames - settings.context_frames
        segments = math.ceil((keys - first) / new_per_segment)
    passes = {1: 0, 4: 1, 16: 2}[settings.interpolation]
    if passes and model.interpolation is None:
        raise ValueError("this bundle has no interpolation model: use interpolation 1")
    lengths = [keys]
    for _ in range(passes):
        lengths.append(interpolated_length(lengths[-1]))
    steps = {"keyframe": settings.steps, "prediction": segments * settings.steps}
    if passes:
        per_window = keys_per_window(model.interpolation.train_frames)
        steps["interpolation"] = settings.steps * sum(len(interpolation_windows(n, per_window)) for n in lengths[:-1])
    if settings.upscale and model.upscaler is not None:
        window = upscaler_window(model.upscaler)
        steps["upscaler"] = settings.upscale_steps * len(spans(lengths[-1], window, window // 4))
    return Plan(keys, first, segments, lengths[-1], model.key_frame_rate * settings.interpolation, steps)


def generate(model, prompt, settings=Settings(), progress=None):
    """A video for ``prompt``: frames ``(t, 3, H, W)`` in [-1, 1] at the size the
    bundle was trained on (4x that with the upscaler) and their frame rate.
    ``progress(steps_done, total)`` is called after every denoising step."""
    work = plan(model, settings)
    done = [0]

    def step(*_):
        done[0] += 1
        if progress is not None:
            progress(done[0], work.total_steps)

    with torch.no_grad():
        text, no_text = model.text_encoder([prompt]), model.text_encoder([""])
        latents = sample_key_frames(model, work, settings, text, no_text, step)
        latents = interpolate_key_frames(model, settings, text, no_text, latents, step)
        frames = decode(model.autoencoder, model.temporal_decoder, settings, latents)
        if settings.upscale and model.upscaler is not None:
            frames = upscale(model.upscaler, settings, model.text_encoder, prompt, frames, step)
    return frames.clamp(-1, 1).cpu(), work.frame_rate


def first_window(model, layers, frames, seed, settings, text, no_text, step=None):
    """``frames`` key frames sampled jointly from ``seed``'s noise with ``layers``
    (the key-frame model; None: the image model, each frame on its own)."""
    noise = torch.randn((frames, model.unet.config.in_channels, *model.latent_size), generator=torch.Generator().manual_seed(seed)).to(model.device)
    with patched(model.unet, layers):
        return sample_guided(Denoiser(model.unet, model.prediction_type), text, no_text, noise, settings.steps, settings.cfg, step)


def sample_key_frames(model, work, settings, text, no_text, step):
    """The first window from the key-frame model, then rollout segments from the prediction model."""
    keys = first_window(model, model.keyframe, work.first_window, settings.seed, settings, text, no_text, step)
    if not work.segments:
        return keys
    denoiser = Denoiser(model.unet, model.prediction_type)
    sample_window = window_sampler(denoiser, text, no_text, settings.steps, settings.cfg, settings.context_scale, settings.seed + 1, model.device, step)
    with patched(model.unet, model.prediction):
        stage = model.prediction.config.stage_flag(0)
        video = predict_segments(keys, work.segments, model.prediction.train_frames, settings.context_frames, sample_window, stage=stage)
    return video[: work.key_frames]


def interpolate_key_frames(model, settings, text, no_text, latents, step):
    passes = {1: 0, 4: 1, 16: 2}[settings.interpolation]
    if not passes:
        return latents
    denoiser = Denoiser(model.unet, model.prediction_type)
    per_window = keys_per_window(model.interpolation.train_frames)
    with patched(model.unet, model.interpolation):
        for stage in range(passes):
            seed = settings.seed + 1000 * (stage + 1)
            sample_window = window_sampler(denoiser, text, no_text, settings.steps, settings.cfg, settings.context_scale, seed, model.device, step)
            latents = interpolate(latents, per_window, sample_window, stage=model.interpolation.config.stage_flag(stage))
    return latents


def decode(autoencoder, temporal, settings, latents):
    """Latents -> frames with ``temporal`` decoder layers in windows of their trained length (the image decoder with None)."""
    window = temporal.train_frames if temporal is not None else 1
    overlap = min(settings.decode_overlap, window - 1)
    # each window clamped before blending, as Temporal VAE Decode's windows come out of ComfyUI's VAE
    return decode_video(lambda z: autoencoder.decode(z, temporal, z.shape[0]).clamp(-1, 1), latents, window, overlap, upscale=autoencoder.module.config.downsampling)


def upscaler_window(upscaler):
    """Frames upscaled together: the temporal layers' trained length, or 1 (frame by frame) without them."""
    return upscaler.layers.train_frames if upscaler.layers is not None else 1


def upscale(upscaler, settings, text_encoder, prompt, frames, step):
    """Frames ``(t, 3, h, w)`` -> ``(t, 3, 4h, 4w)``: the upscaler's latents sampled
    in windows of its temporal layers' length, conditioned on the frames noised
    to one augmentation level, then decoded frame by frame by its autoencoder.
    Noise and augmentation are drawn once for the video and sliced, so windows agree in their overlaps."""
    device = next(upscaler.unet.parameters()).device
    generator = torch.Generator().manual_seed(settings.seed + 7)
    level = round(MAX_NOISE_LEVEL * settings.noise_augmentation)
    low_res = augment_low_res(frames[None].to(device), torch.tensor([level]), generator, alphas_cumprod(**X4_SCHEDULE))[0]
    noise = torch.randn((frames.shape[0], upscaler.unet.config.out_channels, *frames.shape[-2:]), generator=generator).to(device)
    denoiser = Denoiser(upscaler.unet, upscaler.prediction_type, discrete_sigmas(**X4_SCHEDULE))
    text, no_text = text_encoder([prompt]).to(device), text_encoder([""]).to(device)

    def sample_piece(piece):
        low, piece_noise = piece[:, :3], piece[:, 3:]
        levels = torch.full((piece.shape[0],), level, device=device)
        return sample_guided(denoiser, text, no_text, piece_noise, settings.upscale_steps, settings.upscale_cfg, step, concat=low, y=levels)

    window = upscaler_window(upscaler)
    with patched(upscaler.unet, upscaler.layers):
        latents = map_video(sample_piece, torch.cat([low_res, noise], dim=1), window, window // 4)
    return map_video(lambda z: upscaler.autoencoder.decode(z), latents, 1, 0, scale=4)
