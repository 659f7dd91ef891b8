"""The pack's own model files (small UNet, autoencoder, caption encoder):
safetensors whose metadata names the kind of model and its config, so a file
builds its model without code knowing its sizes, and a wrong file is refused."""

import json
import os
from dataclasses import fields

import safetensors
import torch
from safetensors.torch import load_file, save_file

from .autoencoder import AutoencoderConfig, AutoencoderKL
from .text_encoder import TextEncoder, TextEncoderConfig
from .unet import UNetConfig, UNetModel
from .weights import WeightFileError

FORMAT = "vldm.model"
KINDS = {"unet": (UNetModel, UNetConfig), "autoencoder": (AutoencoderKL, AutoencoderConfig), "text_encoder": (TextEncoder, TextEncoderConfig)}


def kind_of(model):
    for kind, (cls, _) in KINDS.items():
        if isinstance(model, cls):
            return kind
    raise TypeError(f"{type(model).__name__} is not one of the pack's own models ({', '.join(KINDS)})")


def save_model(model, path, overwrite=False, **extra):
    """fp32 weights and the config; ``extra`` metadata (e.g. latent_scale, prediction_type) as strings."""
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} exists; choose another name or pass overwrite=True")
    metadata = {"format": FORMAT, "kind": kind_of(model), "config": json.dumps(model.config.to_dict()), **{k: str(v) for k, v in extra.items()}}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_file({k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}, str(path), metadata=metadata)


def load_model(path, kind):
    """(model, metadata) from a file of ``kind``, in eval mode."""
    name = os.path.basename(str(path))
    try:
        with safetensors.safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (safetensors.SafetensorError, OSError) as e:
        raise WeightFileError(f"{name} is not a readable safetensors file ({e}): save it again") from e
    if metadata.get("format") != FORMAT:
        raise WeightFileError(f"{name} is not one of this pack's model files (its metadata lacks format='{FORMAT}')")
    if metadata.get("kind") != kind:
        raise WeightFileError(f"{name} is a model file of kind {metadata.get('kind')!r}; this needs kind {kind!r}")
    cls, config_cls = KINDS[kind]
    values = json.loads(metadata["config"])
    known = {f.name for f in fields(config_cls)}
    if set(values) - known:
        raise WeightFileError(f"{name} has config keys {sorted(set(values) - known)} this pack does not know: update the pack")
    config = config_cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
    model = cls(config)
    model.load_state_dict(load_file(str(path)))
    return model.eval(), metadata
