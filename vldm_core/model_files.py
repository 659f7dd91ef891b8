"""The pack's own model files (small UNet, autoencoder, caption encoder):
safetensors whose metadata names the kind of model and its config, so a file
builds its model without code knowing its sizes, and a wrong file is refused."""

import json
import os

import torch
from safetensors.torch import save_file

from .autoencoder import AutoencoderConfig, AutoencoderKL
from .file_checks import config_from, open_safetensors
from .text_encoder import TextEncoder, TextEncoderConfig
from .unet import UNetConfig, UNetModel
from .weights import DAMAGED

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
    """(model, metadata) from a file of ``kind``, in eval mode; the file's config,
    shapes and values are checked before the model is built."""
    header = open_safetensors(path, DAMAGED, what="model files")
    if header.metadata.get("format") != FORMAT:
        raise header.refuse(f"is not one of this pack's model files (its metadata lacks format='{FORMAT}')", "pick a file that python -m vldm_core.train exported")
    if header.metadata.get("kind") != kind:
        raise header.refuse(f"is a model file of kind {header.metadata.get('kind')!r}; this needs kind {kind!r}", "pick the file of that part")
    header.prediction_type()
    if "latent_scale" in header.metadata:
        header.number("latent_scale", low=1e-6, high=1e6)
    cls, config_cls = KINDS[kind]
    config = config_from(config_cls, header.json("config"), header.refuse)
    return header.build(lambda: cls(config)).eval(), header.metadata
