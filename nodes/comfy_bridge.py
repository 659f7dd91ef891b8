"""The one place that knows ComfyUI's ModelPatcher, conds and sampler entry points.

Temporal layers join a MODEL the way ComfyUI supports adding modules: they live
in their own ModelPatcher (loaded and offloaded with the UNet), are injected
into the UNet's blocks when the clone is loaded and ejected when it is not, and
the UNet hands them control through the forward-timestep-embed patch.
"""

import functools
import math
import os
from types import SimpleNamespace

import comfy.conds
import comfy.model_base
import comfy.model_patcher
import comfy.model_sampling
import comfy.ops
import comfy.patcher_extension
import comfy.samplers
import folder_paths
import torch

from ..vldm_core.comfy_unet import MASKED_CONTEXT, SCALE, TIMESTEP_EMBED_PATCH, video_call
from ..vldm_core.guidance import context_guided
from ..vldm_core.masking import context_input, no_context
from ..vldm_core.motion_module import MotionModuleConfig
from ..vldm_core.sampling import discrete_sigmas
from ..vldm_core.temporal import TemporalLayers
from ..vldm_core.unet_layout import eject, find_layout, inject
from ..vldm_core.weights import load_temporal_layers

KEY = "vldm_temporal_layers"
FOLDER = "temporal_layers"
DECODER_FOLDER = "temporal_decoders"
MOTION_FOLDER = "animatediff_models"  # AnimateDiff-Evolved's folder of motion modules, shared where it is installed
FRESH = "fresh (untrained, for training)"


def register_model_folders():
    """models/temporal_layers and models/temporal_decoders, safetensors only
    (also when extra_model_paths.yaml names them), and models/animatediff_models
    where AnimateDiff-Evolved has not registered it: there its pickled .ckpt
    files are listed too, so that picking one says how to convert it."""
    for folder, extensions in ((FOLDER, {".safetensors"}), (DECODER_FOLDER, {".safetensors"}), (MOTION_FOLDER, {".safetensors", ".ckpt"})):
        default = os.path.join(folder_paths.models_dir, folder)
        paths, known = folder_paths.folder_names_and_paths.get(folder, ([], set()))
        if default not in paths:
            paths.append(default)
        folder_paths.folder_names_and_paths[folder] = (paths, known | extensions if folder == MOTION_FOLDER else extensions)


def temporal_layer_files():
    """What the patcher lists: temporal-layer files, then the motion modules of
    animatediff_models that do not share a name with one."""
    own = folder_paths.get_filename_list(FOLDER)
    motion = [name for name in folder_paths.get_filename_list(MOTION_FOLDER) if name.endswith((".safetensors", ".ckpt")) and name not in own]
    return own + motion


def temporal_layer_path(name):
    return folder_paths.get_full_path(FOLDER, name) or folder_paths.get_full_path_or_raise(MOTION_FOLDER, name)


# ComfyUI reserves memory for the image UNet's activations only; the temporal
# layers add their own attention and feed-forward activations at every
# resolution. Reserve as if the batch held this many times the frames.
TEMPORAL_ACTIVATION_FACTOR = 1.5


def _reserve_temporal_activations(executor, model, noise_shape, *args, **kwargs):
    noise_shape = [math.ceil(noise_shape[0] * TEMPORAL_ACTIVATION_FACTOR)] + list(noise_shape[1:])
    return executor(model, noise_shape, *args, **kwargs)


def unet_of(model):
    return model.model.diffusion_model


def prediction_type(model):
    return {comfy.model_base.ModelType.EPS: "eps", comfy.model_base.ModelType.V_PREDICTION: "v"}.get(model.model.model_type)


def temporal_layers_of(model):
    """The TemporalLayers a MODEL was patched with, or None."""
    holders = model.get_additional_models_with_key(KEY)
    return holders[0].model if holders else None


def require_temporal_layers(model, fix):
    """The MODEL's temporal layers; ``fix`` tells the user what to do where there are none."""
    layers = temporal_layers_of(model)
    if layers is None:
        raise ValueError(f"this MODEL has no Video LDM temporal layers: {fix}")
    return layers


CONTEXT_MODES = ("prediction", "interpolation")  # modes whose layers take masked context frames c_S


def layers_for_mode(model, mode):
    """The MODEL's temporal layers, checked to be trained for ``mode`` ("prediction",
    "interpolation", "upscaler"); the context modes also need layers that take c_S."""
    trained_as = f"trained as {'an' if mode[0] in 'aeiou' else 'a'} {mode} model"
    layers = require_temporal_layers(model, f"pass it through Temporal UNet Patcher with a file {trained_as} first")
    takes_context = bool(layers.config.context_latent_channels) or mode not in CONTEXT_MODES
    if mode not in layers.modes or not takes_context:
        raise ValueError(f"these temporal layers were trained for {', '.join(layers.modes)}, not {mode}: load a temporal-layer file {trained_as}{context_branch_hint(layers)}")
    if layers.train_frames is None:
        raise ValueError(f"fresh temporal layers have no trained window length: load a temporal-layer file {trained_as}")
    return layers


def context_branch_hint(layers):
    """For a motion module without a context branch: where to get one."""
    if isinstance(layers.config, MotionModuleConfig) and not layers.config.context_latent_channels:
        return " (a motion module needs its context branch trained first: python -m vldm_core.train, see the README's 'Use AnimateDiff motion modules')"
    return ""


def load_layers_for(model, name):
    """Temporal layers for ``model``: fresh (identity at start), or from a file in
    models/temporal_layers or a motion module in models/animatediff_models, in
    the dtype the UNet computes in."""
    unet = unet_of(model)
    if name == FRESH:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            return TemporalLayers(find_layout(unet), ops=comfy.ops.manual_cast, train_frames=None)
    layers = load_temporal_layers(temporal_layer_path(name), functools.partial(find_layout, unet), ops=comfy.ops.manual_cast, prediction_type=prediction_type(model))
    return layers.to(model.model.manual_cast_dtype or model.model.get_dtype())


def with_temporal_layers(model, layers: TemporalLayers, scale=1.0):
    """A clone of ``model`` that runs ``layers``, each temporal layer's change to
    the features scaled by ``scale`` (0: the image model exactly); ``model``
    itself is untouched. Layers trained with another noise schedule than the
    image model's (motion modules) bring it along."""
    if temporal_layers_of(model) is not None:
        raise ValueError("this MODEL already has Video LDM temporal layers: connect the Temporal UNet Patcher to the original image MODEL")
    patched = model.clone()
    holder = comfy.model_patcher.ModelPatcher(layers, load_device=model.load_device, offload_device=model.offload_device)
    patched.set_additional_models(KEY, [holder])
    if scale != 0:  # at 0 nothing is injected (frame-joint norms and noise schedule included), yet the sampler nodes see the layers' limits
        patched.set_injections(
            KEY,
            [comfy.patcher_extension.PatcherInjection(inject=lambda mp: inject(unet_of(mp), layers), eject=lambda mp: eject(unet_of(mp)))],
        )
    patched.set_model_forward_timestep_embed_patch(TIMESTEP_EMBED_PATCH)
    patched.model_options.setdefault("transformer_options", {})[SCALE] = scale
    patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.PREPARE_SAMPLING, KEY, _reserve_temporal_activations)
    patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, KEY, video_call)
    if layers.config.betas and scale != 0:
        with_training_schedule(patched, layers.config.betas)
    return patched


COMFY_BETAS = {"linear": "sqrt_linear"}  # our name -> ComfyUI's (whose "linear" is SD's scaled-linear schedule)


def with_training_schedule(model, betas):
    """Give ``model`` (a clone) the noise schedule ``betas`` (sampling.alphas_cumprod)
    where it still samples with SD's own; a schedule the user chose before
    (e.g. ModelSamplingDiscrete) is kept."""
    current = model.get_model_object("model_sampling")
    sigmas = getattr(current, "sigmas", None)
    sd = discrete_sigmas()
    if not isinstance(current, comfy.model_sampling.ModelSamplingDiscrete) or sigmas is None or sigmas.shape != sd.shape or not torch.allclose(sigmas.float().cpu(), sd, rtol=1e-4):
        return
    settings = {"beta_schedule": COMFY_BETAS[betas], "linear_start": 0.00085, "linear_end": 0.012}
    model.add_object_patch("model_sampling", type(current)(SimpleNamespace(sampling_settings=settings)))


def sample_frames(model, noise_seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_frames):
    """Denoise all frames of ``latent_frames`` jointly with ComfyUI's own samplers,
    with ComfyUI's progress bar and cancel."""
    import comfy.sample
    import comfy.utils
    import latent_preview

    latent_frames = comfy.sample.fix_empty_latent_channels(model, latent_frames)
    noise = comfy.sample.prepare_noise(latent_frames, noise_seed)
    return comfy.sample.sample(
        model, noise, steps, cfg, sampler_name, scheduler, positive, negative, latent_frames,
        callback=latent_preview.prepare_callback(model, steps), disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=noise_seed,
    )


def with_masked_context(conditioning, masked_context):
    """``conditioning`` whose every entry carries c_S, batched like the frames."""
    return [[c, {**d, "model_conds": {**d.get("model_conds", {}), MASKED_CONTEXT: comfy.conds.CONDNoiseShape(masked_context)}}] for c, d in conditioning]


class ContextGuider(comfy.samplers.CFGGuider):
    """Text guidance and context guidance together (vldm_core.guidance), so
    every ComfyUI sampler and scheduler works with the masked-context models."""

    def __init__(self, model_patcher, positive, negative, known, mask, cfg, context_scale, stage=None):
        super().__init__(model_patcher)
        with_context = context_input(model_patcher.model.process_latent_in(known), mask, stage)
        self.context_scale = context_scale
        self.set_cfg(cfg)
        conds = {"positive": with_masked_context(positive, with_context), "negative": with_masked_context(negative, with_context)}
        if context_scale != 1.0:  # at s = 1 the context-free prediction cancels: skip computing it
            conds["no_context"] = with_masked_context(negative, no_context(known, stage))
        self.inner_set_conds(conds)

    def predict_noise(self, x, timestep, model_options={}, seed=None):
        if self.context_scale == 1.0:
            return super().predict_noise(x, timestep, model_options, seed)
        plain, context_only, full = comfy.samplers.calc_cond_batch(
            self.inner_model, [self.conds["no_context"], self.conds["negative"], self.conds["positive"]], x, timestep, model_options
        )
        return context_guided(plain, context_only, full, self.cfg, self.context_scale)


def to_intermediate(x):
    """Where finished frames wait: ComfyUI's intermediate device, off the GPU."""
    import comfy.model_management

    return x.to(comfy.model_management.intermediate_device())


def check_video_latent(model, latent, layers=None):
    """The LATENT must be a video of this model family's latents, frames in the batch axis."""
    samples = latent["samples"]
    if samples.ndim != 4:
        raise ValueError(
            f"this LATENT has shape {tuple(samples.shape)}; Video LDM keeps a video as (frames, channels, height, width), "
            "one latent per frame: start from the Keyframe Sampler or an image-model LATENT, not a video model's 5-D latent"
        )
    channels = model.model.latent_format.latent_channels
    if samples.shape[1] != channels:
        raise ValueError(
            f"this LATENT has {samples.shape[1]} channels, but this MODEL's latents have {channels}: "
            "the video was made by another model family; sample it with this MODEL (or encode its frames with this MODEL's VAE)"
        )
    if layers is not None and layers.config.context_latent_channels not in (0, channels):
        raise ValueError(
            f"these temporal layers take context latents of {layers.config.context_latent_channels} channels, this MODEL's have {channels}: "
            "load a temporal-layer file trained for this model family"
        )


def video_latent(source, samples, frame_rate_factor=1):
    """A LATENT like ``source`` holding ``samples``: per-frame entries of the old
    length (noise mask, batch index) are dropped, the frame rate is scaled."""
    out = {k: v for k, v in source.items() if k not in ("noise_mask", "batch_index")}
    out["samples"] = samples
    if "frame_rate" in source:
        out["frame_rate"] = source["frame_rate"] * frame_rate_factor
    return out


def window_progress(model, windows, steps):
    """One progress bar (with latent previews) across all windows of a rollout:
    returns ``next_window()``, which gives the sampler callback of the next window."""
    import comfy.utils
    import latent_preview

    previewer = latent_preview.get_previewer(model.load_device, model.model.latent_format)
    bar = comfy.utils.ProgressBar(windows * steps)
    started = iter(range(windows))

    def next_window():
        offset = next(started) * steps

        def callback(step, x0, x, total_steps):
            preview = previewer.decode_latent_to_preview_image("JPEG", x0) if previewer else None
            bar.update_absolute(offset + step + 1, preview=preview)

        return callback

    return next_window


def window_sampler(model, positive, negative, noise_seed, steps, cfg, sampler_name, scheduler, context_scale, progress):
    """``sample_window(known, mask, index, [stage])`` for vldm_core.rollout: one window,
    denoised with context guidance by ComfyUI's sampler and scheduler, with
    ComfyUI's cancel and the ``progress`` of window_progress. Each window draws its own noise."""
    import comfy.model_management
    import comfy.sample
    import comfy.utils

    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), scheduler, steps)
    sampler = comfy.samplers.sampler_object(sampler_name)

    def sample_window(known, mask, index=0, stage=None):
        comfy.model_management.throw_exception_if_processing_interrupted()
        guider = ContextGuider(model, positive, negative, known, mask, cfg, context_scale, stage)
        empty = torch.zeros_like(known)
        noise = comfy.sample.prepare_noise(empty, noise_seed + index)
        return to_intermediate(guider.sample(
            noise, empty, sampler, sigmas, callback=progress(),
            disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=noise_seed + index,
        ))

    return sample_window


# ------------------------------------------------------------------ SD x4 upscaler


def model_family(model):
    """What a MODEL is, in words, for messages."""
    try:
        return find_layout(unet_of(model)).family
    except ValueError:
        return type(model.model).__name__


def require_x4_upscaler(model):
    if not isinstance(model.model, comfy.model_base.SD_X4Upscaler):
        raise ValueError(
            f"this MODEL is {model_family(model)}, the Video Upscaler needs the SD x4 upscaler (x4-upscaler-ema.safetensors, loaded with "
            "Load Checkpoint), optionally patched by Temporal UNet Patcher with upscaler temporal layers: connect that MODEL instead"
        )


def augmented_low_res(model, pixels, noise_augmentation, seed):
    """The x4 upscaler's low-res input and its noise level, as ComfyUI's x4
    conditioning makes them (the model's own augmentor, level round(max *
    noise_augmentation), noise seeded with seed - 10), but for a whole video
    at once: ComfyUI draws that noise per call, i.e. per tile, the same
    pattern in every tile; drawn once, it is the same wherever tiles fall.
    ``pixels``: (frames, 3, height, width) in [-1, 1]."""
    augmentor = model.model.noise_augmentor
    level = round(augmentor.max_noise_level * noise_augmentation)
    if noise_augmentation > 0:
        noise = torch.randn(pixels.size(), dtype=pixels.dtype, generator=torch.Generator().manual_seed(seed - 10)).to(pixels.device)
        pixels = augmentor.q_sample(pixels, torch.tensor([level], device=pixels.device), noise=noise)
    return pixels, level


def x4_conditioning(conditioning, low_res):
    """``conditioning`` carrying low-res frames already augmented (augmented_low_res):
    ComfyUI's x4 conds then pass them on unchanged, and with_noise_level gives the level."""
    return [[c, {**d, "concat_image": low_res, "noise_augmentation": 0.0}] for c, d in conditioning]


def _noise_level_as_y(level, executor, x, timesteps, context, y, *args, **kwargs):
    return executor(x, timesteps, context, torch.full_like(y, level), *args, **kwargs)


def with_noise_level(model, level):
    """A clone of an x4 upscaler MODEL whose UNet is told augmentation level
    ``level`` (its class label ``y``, where ComfyUI's x4 conds put it) for
    low-res frames augmented beforehand."""
    told = model.clone()
    told.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "vldm_noise_level", functools.partial(_noise_level_as_y, level))
    return told
