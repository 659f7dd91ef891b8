"""Weights of a public network from a safetensors file whose keys are that
network's public state dict: checked by key and shape before anything is
copied, and refused with what is wrong and how to make a fitting file."""

from torch import nn

from ..file_checks import WeightFileError, open_safetensors, state_problems


def load_weights(model: nn.Module, path, what, conversion, unused=(), hint=None, name=None):
    """Copy the tensors of ``path`` into ``model``; return it frozen, in eval mode.

    ``what`` names the network and layout in messages; ``conversion`` says how
    to make a fitting file; ``unused`` are keys a genuine file may hold that
    ``model`` does not need (e.g. a classifier), dropped; ``hint(keys)`` may
    recognise a foreign layout; ``name`` is the file's name in messages (its
    base name by default). BatchNorm's ``num_batches_tracked`` may be
    absent (checkpoints from before PyTorch 0.4.1 lack it; eval never reads it).
    """
    header = open_safetensors(path, conversion, pickled=conversion, what=f"{what} weights")
    name = name or header.name
    shapes = {k: v for k, v in header.shapes.items() if k not in unused}
    expected = model.state_dict()
    problems = state_problems(expected, shapes, optional=[k for k in expected if k.endswith("num_batches_tracked")])
    if problems:
        recognised = (hint(list(shapes)) if hint else None) or ""
        if any(k.startswith("module.") for k in shapes):
            recognised = "Its keys start with 'module.' (saved from DataParallel): strip that prefix before saving. "
        raise WeightFileError(f"{name} does not hold {what} weights: {', '.join(problems)}. {recognised}{conversion}")
    state = {k: v for k, v in header.tensors(integers=("*num_batches_tracked", *unused)).items() if k not in unused}
    model.load_state_dict(state, strict=False)  # checked above; only num_batches_tracked may be left at 0
    return model.eval().requires_grad_(False)
