"""Weights of a public network from a safetensors file whose keys are that
network's public state dict: checked by key and shape before anything is
copied, and refused with what is wrong and how to make a fitting file."""

import os

from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from ..weights import WeightFileError


def load_weights(model: nn.Module, path, what, conversion, unused=(), hint=None, name=None):
    """Copy the tensors of ``path`` into ``model``; return it frozen, in eval mode.

    ``what`` names the network and layout in messages; ``conversion`` says how
    to make a fitting file; ``unused`` are keys a genuine file may hold that
    ``model`` does not need (e.g. a classifier), dropped; ``hint(keys)`` may
    recognise a foreign layout; ``name`` is the file's name in messages (its
    base name by default). BatchNorm's ``num_batches_tracked`` may be
    absent (checkpoints from before PyTorch 0.4.1 lack it; eval never reads it).
    """
    name = name or os.path.basename(str(path))
    if not str(path).endswith(".safetensors"):
        raise WeightFileError(f"{name}: {what} weights load from .safetensors files only (pickled .pt/.pth/.bin files are never opened). {conversion}")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise WeightFileError(f"{name} is not a readable safetensors file ({e}); it may be truncated or not safetensors at all. {conversion}") from e
    state = {k: v for k, v in state.items() if k not in unused}
    expected = model.state_dict()
    missing = sorted(k for k in set(expected) - set(state) if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = [f"{k} is {tuple(state[k].shape)}, not {tuple(expected[k].shape)}" for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong_shape:
        problems = [
            f"{len(missing)} keys missing (e.g. {missing[:3]})" if missing else "",
            f"{len(unexpected)} keys it should not have (e.g. {unexpected[:3]})" if unexpected else "",
            f"wrong shapes: {'; '.join(wrong_shape[:3])}" if wrong_shape else "",
        ]
        recognised = (hint(list(state)) if hint else None) or ""
        if any(k.startswith("module.") for k in state):
            recognised = "Its keys start with 'module.' (saved from DataParallel): strip that prefix before saving. "
        raise WeightFileError(f"{name} does not hold {what} weights: {', '.join(p for p in problems if p)}. {recognised}{conversion}")
    model.load_state_dict(state, strict=False)  # checked above; only num_batches_tracked may be left at 0
    return model.eval().requires_grad_(False)
