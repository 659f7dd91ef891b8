"""Stable Diffusion checkpoints as training bases, through ComfyUI's own loaders
(the CLI's ``[base] checkpoint``): the UNet the temporal layers learn on is
exactly the one the nodes will patch, with ComfyUI's text encoder and VAE.

The one module of vldm_core that imports ComfyUI, and only when a config names
a checkpoint. ComfyUI is found as an importable ``comfy``, else at
``base.comfyui`` or $COMFYUI_PATH, else as the folder this pack is installed in
(``ComfyUI/custom_nodes/<this pack>``).

Every check runs before any training: the file is safetensors (never
unpickled), ComfyUI recognises it, it is the family the job trains on, and
its noise schedule and prediction type are the ones the job's objective uses.
"""

import os
import sys
from dataclasses import dataclass
from typing import Callable

import safetensors
import torch

from ..autoencoder import scaled_encoder
from ..comfy_unet import call_unet
from ..sampling import discrete_sigmas
from .upscaler_job import X4_SCHEDULE

PACK_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WANTED = {
    "temporal_layers": "an SD 1.x or 2.x checkpoint (e.g. v1-5-pruned-emaonly.safetensors, v2-1_768-ema-pruned.safetensors)",
    "upscaler": "the SD x4 upscaler (x4-upscaler-ema.safetensors)",
    "temporal_decoder": "a checkpoint with an SD-style KL-f8 VAE (SD 1.x, 2.x or SDXL), or a VAE file (base.vae)",
}


@dataclass
class CheckpointBase:
    """What a job needs of a checkpoint, on the training device and frozen."""

    unet: torch.nn.Module  # ComfyUI's UNetModel; call it with call_unet
    encode_text: Callable  # captions -> (b, tokens, dim), ComfyUI's CLIP encode
    encode_frames: Callable  # pixels (n, 3, H, W) in [-1, 1] -> latents as the UNet sees them
    prediction_type: str
    autoencoder: torch.nn.Module  # the VAE's first_stage_model (SD layout)
    call_unet: Callable = call_unet


def import_comfy(comfyui=""):
    """Make ComfyUI importable and return ``comfy.sd``, or explain where to point."""
    candidates = [comfyui, os.environ.get("COMFYUI_PATH", ""), os.path.dirname(os.path.dirname(PACK_ROOT))]
    try:
        import comfy.sd  # noqa: F401  (already importable: a ComfyUI process or its folder on sys.path)
    except ImportError:
        found = next((c for c in candidates if c and os.path.isfile(os.path.join(c, "comfy", "model_management.py"))), None)
        if found is None:
            raise ValueError(
                "base.checkpoint is loaded with ComfyUI's loaders, and no ComfyUI was found: set base.comfyui (or COMFYUI_PATH) "
                "to your ComfyUI folder, or run from the pack installed in ComfyUI/custom_nodes"
            ) from None
        sys.path.append(found)  # appended: this pack's own top-level names (nodes, vldm_core) stay first
        import comfy.sd  # noqa: F401
    return sys.modules["comfy.sd"]


def check_safetensors(path, key):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"base.{key} {path} does not exist")
    if not path.endswith(".safetensors"):
        raise ValueError(f"base.{key} {os.path.basename(path)} is not a .safetensors file: this pack never unpickles weights; convert it to safetensors")
    try:
        with safetensors.safe_open(path, framework="pt"):
            pass
    except (safetensors.SafetensorError, OSError) as e:
        raise ValueError(f"base.{key} {os.path.basename(path)} is not a readable safetensors file ({e}); it may be truncated: download it again") from e


def family_problem(model, kind):
    """Why ``model`` (a ComfyUI ModelPatcher) cannot be the base of ``kind``, or None."""
    import comfy.model_base
    import comfy.supported_models

    base = model.model
    config = base.model_config
    name = type(config).__name__
    if kind == "upscaler":
        right = isinstance(base, comfy.model_base.SD_X4Upscaler)
    else:
        right = type(base) is comfy.model_base.BaseModel and isinstance(config, (comfy.supported_models.SD15, comfy.supported_models.SD20))
        if right and config.unet_config.get("in_channels", 4) != 4:
            return f"an inpainting or edit checkpoint ({config.unet_config['in_channels']} input channels)"
    return None if right else f"a {name} checkpoint ({type(base).__name__})"


def prediction_type(model):
    """"eps" or "v" for a ComfyUI model of either, else None."""
    return {"EPS": "eps", "V_PREDICTION": "v"}.get(model.model.model_type.name)


def schedule_problem(model, kind):
    """Why the checkpoint's noise schedule or prediction type differs from the job's objective, or None."""
    if prediction_type(model) is None:
        return f"a {model.model.model_type.name} model; the trainer trains eps or v prediction"
    expected = discrete_sigmas(**(X4_SCHEDULE if kind == "upscaler" else {}))
    sigmas = model.model.model_sampling.sigmas.float().cpu()
    if sigmas.shape != expected.shape or not torch.allclose(sigmas, expected, rtol=1e-4):
        return "a model with another noise schedule than SD's (zero terminal SNR or other betas); the trainer trains on SD's schedule"
    return None


def caption_encoder(clip, device):
    """Captions -> CLIP's per-token conditioning, each caption encoded once (captions repeat across clips)."""
    cache = {}

    def encode_text(captions):
        for caption in set(captions) - set(cache):
            cache[caption] = clip.encode_from_tokens(clip.tokenize(caption)).float().cpu()
        return torch.cat([cache[c] for c in captions]).to(device)

    return encode_text


def load_checkpoint(path, kind, device, comfyui=""):
    """The frozen base of a UNet job (``kind`` "temporal_layers" or "upscaler") from an SD checkpoint, on ``device``."""
    check_safetensors(path, "checkpoint")
    comfy_sd = import_comfy(comfyui)
    name = os.path.basename(path)
    try:
        model, clip, vae, _ = comfy_sd.load_checkpoint_guess_config(path, model_options={"dtype": torch.float32})
    except RuntimeError as e:
        raise ValueError(f"ComfyUI does not recognise {name} as a checkpoint ({str(e).splitlines()[0]}): base.checkpoint takes {WANTED[kind]}") from e
    problem = family_problem(model, kind) or schedule_problem(model, kind)
    if problem:
        article = "an" if kind[0] in "aeiou" else "a"
        raise ValueError(f"{name} is {problem}: {article} {kind} job trains on {WANTED[kind]}")
    if clip is None:
        raise ValueError(f"{name} holds no text encoder: use a full checkpoint that includes its CLIP")
    autoencoder = vae_module(vae, name).to(device)
    return CheckpointBase(
        unet=model.model.diffusion_model.to(device, torch.float32).requires_grad_(False),
        encode_text=caption_encoder(clip, device),
        encode_frames=scaled_encoder(autoencoder, model.model.latent_format.scale_factor),
        prediction_type=prediction_type(model),
        autoencoder=autoencoder,
    )


def vae_module(vae, name):
    """The VAE's autoencoder (SD's KL layout), frozen and in fp32, or a clear refusal."""
    module = getattr(vae, "first_stage_model", None)
    if module is None or not all(hasattr(module, part) for part in ("encoder", "decoder", "quant_conv", "post_quant_conv")):
        raise ValueError(f"{name} has no SD-style KL VAE: {WANTED['temporal_decoder']}")
    return module.float().requires_grad_(False).eval()


def load_vae(path, device, comfyui="", key="vae"):
    """The autoencoder of a VAE file (``key`` "vae", e.g. vae-ft-mse-840000-ema-pruned.safetensors)
    or of a checkpoint's VAE (``key`` "checkpoint"), through ComfyUI's VAE loader."""
    check_safetensors(path, key)
    import_comfy(comfyui)
    import comfy.sd
    import comfy.utils

    name = os.path.basename(path)
    if key == "checkpoint":
        try:
            vae = comfy.sd.load_checkpoint_guess_config(path, output_model=False, output_clip=False)[2]
        except RuntimeError as e:
            raise ValueError(f"ComfyUI does not recognise {name} as a checkpoint ({str(e).splitlines()[0]}): base.checkpoint takes {WANTED['temporal_decoder']}") from e
    else:
        vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(path, safe_load=True))
    return vae_module(vae, name).to(device)
