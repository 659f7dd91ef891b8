"""The one way in for every file the pack reads: weight files (temporal
layers, temporal decoders, model files, motion modules, training
checkpoints, cached latents) and data files (bundle.json, training configs,
caption lists, the latent-cache index).

Downloads get truncated and files get renamed from other packs: each check
here names the file, what is wrong and the fix, in a ``WeightFileError`` or a
``DataFileError``, and runs before any compute and any write. A safetensors
file is opened with safetensors itself (which refuses a header that points
past the file's end), its metadata is parsed and typed field by field, its
tensors' shapes are checked against the module they will fill before that
module is built (so an absurd config allocates nothing), and their dtypes
and values are checked before anything is copied.
"""

import json
import math
import os
from dataclasses import MISSING, dataclass, fields
from fnmatch import fnmatchcase
from itertools import chain

import safetensors
import torch
from safetensors.torch import load_file


class WeightFileError(ValueError):
    """A weight file that cannot be used; the message names the file, what is wrong and the fix."""


class DataFileError(ValueError):
    """A config, caption, index or bundle file that cannot be used; the message names the file, what is wrong and the fix."""


PICKLES = (".ckpt", ".pt", ".pth", ".bin")
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")
PREDICTION_TYPES = ("eps", "v")
LARGEST = 1 << 16  # the largest count or width a config may ask for (channels, frames, tokens); real models stay far below
LARGEST_LIST = 64  # the longest list a config may hold (channel multipliers, attention levels)


def is_whole(value):
    """An integer and not a bool (JSON and TOML keep them apart; Python does not)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value):
    """A finite whole or decimal number (not a bool, NaN or infinity)."""
    return is_whole(value) or (isinstance(value, float) and math.isfinite(value))


def first_non_finite(state):
    """The name of the first floating-point tensor of ``state`` holding NaN or
    infinity, or None. A sum is NaN or infinite where any value is: one pass, no mask."""
    return next((key for key, tensor in state.items() if tensor.is_floating_point() and not bool(torch.isfinite(tensor.sum(dtype=torch.float32)))), None)


def state_problems(expected, state, optional=()):
    """What keeps ``state`` from loading into a module whose state dict is
    ``expected`` (keys in ``optional`` may be absent), in words; [] where it
    fits. Either may hold tensors or shapes."""
    expected, state = ({k: tuple(getattr(v, "shape", v)) for k, v in d.items()} for d in (expected, state))
    missing = sorted(set(expected) - set(state) - set(optional))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = [f"{k} is {state[k]}, not {expected[k]}" for k in expected if k in state and state[k] != expected[k]]
    return [
        problem
        for problem in (
            f"{len(missing)} tensors missing (e.g. {missing[:3]})" if missing else "",
            f"{len(unexpected)} tensors it should not have (e.g. {unexpected[:3]})" if unexpected else "",
            f"wrong shapes: {'; '.join(wrong_shape[:3])}" if wrong_shape else "",
        )
        if problem
    ]


@dataclass(frozen=True)
class Safetensors:
    """A safetensors file's header (metadata, tensor shapes and dtypes), read
    without its tensors; ``fix`` is what every refusal of this file tells the user to do."""

    path: str
    metadata: dict
    shapes: dict
    dtypes: dict
    fix: str

    @property
    def name(self):
        return os.path.basename(self.path)

    def refuse(self, problem, fix=None):
        return WeightFileError(f"{self.name} {problem}: {fix or self.fix}")

    def text(self, key):
        """Metadata field ``key``, which the file must have."""
        if key not in self.metadata:
            raise self.refuse(f"lacks {key!r} in its metadata")
        return self.metadata[key]

    def json(self, key, kind=dict):
        """Metadata field ``key`` parsed as JSON, which must be a ``kind``."""
        try:
            value = json.loads(self.text(key))
        except ValueError as e:
            raise self.refuse(f"has metadata {key!r} that is not valid JSON ({e})") from None
        if not isinstance(value, kind):
            raise self.refuse(f"has metadata {key!r} that is a {type(value).__name__}, not a {kind.__name__}")
        return value

    def integer(self, key, low=1, high=LARGEST):
        """Metadata field ``key`` as an integer in ``[low, high]``."""
        text = self.text(key)
        try:
            value = int(text)
        except ValueError:
            raise self.refuse(f"has metadata {key!r} = {text[:40]!r}, which is not a whole number") from None
        if not low <= value <= high:
            raise self.refuse(f"has metadata {key!r} = {value}, outside {low} to {high}")
        return value

    def prediction_type(self):
        """What the model the file was trained for predicts (metadata 'prediction_type'): one of PREDICTION_TYPES, or None where unsaid."""
        value = self.metadata.get("prediction_type") or None
        if value not in (None, *PREDICTION_TYPES):
            raise self.refuse(f"has metadata 'prediction_type' = {value[:20]!r}; it is one of {PREDICTION_TYPES}")
        return value

    def number(self, key, low, high):
        """Metadata field ``key`` as a finite number in ``[low, high]``."""
        text = self.text(key)
        try:
            value = float(text)
        except ValueError:
            raise self.refuse(f"has metadata {key!r} = {text[:40]!r}, which is not a number") from None
        if not low <= value <= high:  # also false for NaN
            raise self.refuse(f"has metadata {key!r} = {value}, outside {low:g} to {high:g}")
        return value

    def tensors(self, integers=()):
        """Every tensor, after checking that each is a float (names matching one of
        the patterns ``integers``, e.g. "rng.*", may be integers) and holds no NaN or infinity."""
        for key, dtype in self.dtypes.items():
            if dtype not in FLOAT_DTYPES and not any(fnmatchcase(key, pattern) for pattern in integers):
                raise self.refuse(f"stores {key} as {dtype}; weights are floating point")
        try:
            state = load_file(self.path)
        except (safetensors.SafetensorError, OSError) as e:
            raise self.refuse(f"could not be read ({e}); it may be truncated") from e
        bad = first_non_finite(state)
        if bad:
            raise self.refuse(f"holds NaN or infinite values in {bad}")
        return state

    def build(self, make, rename=None, integers=()):
        """The module ``make()`` builds, filled with this file's tensors. It is
        built on the meta device first and its state dict's shapes compared with
        the file's (``rename`` maps the file's names to the module's), so a file
        describing an absurd model allocates nothing; then the file's tensors
        become its weights, in the module's dtypes: allocated once, from the file."""
        rename = rename or (lambda state: state)
        try:
            with torch.device("meta"):
                module = make()
        except (ValueError, TypeError, RuntimeError, ZeroDivisionError) as e:
            raise self.refuse(f"describes a model that cannot be built ({e})") from None
        expected = module.state_dict()
        problems = state_problems(expected, rename(self.shapes))
        if problems:
            raise self.refuse(f"does not hold the tensors of the model it describes ({', '.join(problems)})")
        state = rename(self.tensors(integers))
        module.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, assign=True)
        left = [name for name, t in chain(module.named_parameters(), module.named_buffers()) if t.is_meta]
        assert not left, f"{left[:3]} are outside the state dict: build such a module for real"
        return module


def open_safetensors(path, fix, pickled="save it as .safetensors", what="weights"):
    """The header of the safetensors file at ``path``; ``fix`` is what refusals of
    it tell the user to do. A pickled file is refused unopened (it could run
    any code), with ``pickled`` saying how to get a safetensors one."""
    name = os.path.basename(str(path))
    if str(path).endswith(PICKLES):
        raise WeightFileError(f"{name} is a pickled file, which this pack never opens (it could run any code): {pickled}")
    if not str(path).endswith(".safetensors"):
        raise WeightFileError(f"{name}: {what} load from .safetensors files only (pickled .ckpt/.pt files are never opened)")
    try:
        with safetensors.safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            slices = {k: f.get_slice(k) for k in f.keys()}
            shapes = {k: tuple(s.get_shape()) for k, s in slices.items()}
            dtypes = {k: s.get_dtype() for k, s in slices.items()}
    except (safetensors.SafetensorError, OSError) as e:
        raise WeightFileError(f"{name} is not a readable safetensors file ({e}); it may be truncated or corrupt: {fix}") from e
    return Safetensors(str(path), metadata, shapes, dtypes, fix)


def config_from(cls, values, refuse, largest=LARGEST):
    """``cls(**values)`` for a config dataclass, once every key is known and every
    value has its field's type: whole numbers in ``[0, largest]``, finite
    numbers, lists of at most ``LARGEST_LIST`` such numbers (floats where the
    field's default holds one). ``refuse(problem)`` makes the error to raise."""
    if not isinstance(values, dict):
        raise refuse(f"has a config that is a {type(values).__name__}, not a table")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise refuse(f"has config keys {unknown} this pack does not know (update the pack if the file is newer)")
    lacking = sorted(name for name, f in known.items() if name not in values and f.default is MISSING and f.default_factory is MISSING)
    if lacking:
        raise refuse(f"has a config without {lacking}")
    return cls(**{key: _typed(key, value, _kind(known[key]), refuse, largest) for key, value in values.items()})


def _kind(field):
    """A config field's type by name; a tuple's elements are floats where its default holds one."""
    kind = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", str(field.type))
    if kind == "tuple" and isinstance(field.default, tuple) and any(isinstance(v, float) for v in field.default):
        return "floats"
    return kind


def _typed(key, value, kind, refuse, largest):
    whole = is_whole(value)
    if kind == "bool" and isinstance(value, bool):
        return value
    if kind == "int" and whole:
        if not 0 <= value <= largest:
            raise refuse(f"has config {key} = {value}, outside 0 to {largest}")
        return value
    if kind == "float" and is_number(value):
        return float(value)
    if kind == "str" and isinstance(value, str):
        return value
    if kind in ("tuple", "floats") and isinstance(value, (list, tuple)) and len(value) <= LARGEST_LIST:
        return tuple(_typed(key, v, "float" if kind == "floats" else "int", refuse, largest) for v in value)
    wanted = {"tuple": "list of whole numbers", "floats": "list of numbers", "int": "whole number", "float": "finite number"}.get(kind, kind)
    raise refuse(f"has config {key} = {str(value)[:40]!r}, which is not a {wanted}")


def read_text(path, fix, error=DataFileError):
    """The UTF-8 text in ``path``, or a named refusal."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise error(f"{os.path.basename(str(path))} is not UTF-8 text ({e}): {fix}") from None


def read_json(path, fix, error=DataFileError):
    """The JSON value in ``path``, or a named refusal."""
    try:
        return json.loads(read_text(path, fix, error))
    except ValueError as e:
        raise error(f"{os.path.basename(str(path))} is not valid JSON ({e}): {fix}") from None
