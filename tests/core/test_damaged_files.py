"""Every kind of file the pack reads, damaged the ways downloads and hand edits
damage files (truncated, bytes flipped in the header, metadata keys dropped or
replaced by junk, NaN or infinite values, integer tensors, tensors added or
missing), is refused with the pack's named error (WeightFileError for weight
files, DataFileError for configs and data), never another exception and never a
silent load, and the file is left byte for byte as it was. Property-based, with
bounded examples and a fixed seed: the same cases on every run."""

import hashlib
import json
import math
import shutil
import tempfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies
from safetensors.torch import load as load_bytes, save as save_bytes

from vldm_core.file_checks import DataFileError, WeightFileError
from vldm_core.model_files import load_model
from vldm_core.pipeline import read_bundle
from vldm_core.temporal_decoder import find_decoder_layout
from vldm_core.train.cli import check_config, read_config
from vldm_core.train.data import LatentCache, LatentClips, find_videos
from vldm_core.train.loop import TrainConfig, _read_checkpoint, _run_record, train
from vldm_core.unet import UNetModel
from vldm_core.unet_layout import find_layout
from vldm_core.weights import load_temporal_layers

from animatediff_reference import published_state_dict
from tiny_models import SD15_LAYOUT, write_motion_module, write_tiny_bundle
from train_toys import ToyData, ToyJob

EXAMPLES = settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
JUNK = ("", "{", "null", "[]", "[1, 2", '"x"', "true", "NaN", "-1", "0", "1e999", "99999999999", "\x00", "\u00e9\u00e9")


@dataclass
class Kind:
    """A file kind: the intact file, how the pack reads it (``read(path)``),
    the metadata keys it cannot do without and the tensors it must hold as floats."""

    path: Path
    read: callable
    required: tuple = ()
    floats: tuple = None  # tensor names an integer dtype is refused for (None: all)
    beside: dict = None  # files the reader needs in the same folder: name -> bytes


def digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def parts(data):
    """(header JSON, tensors, metadata) of safetensors bytes."""
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    return header, load_bytes(data), header.get("__metadata__")


@pytest.fixture(scope="module")
def weight_kinds(tmp_path_factory):
    folder = write_tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny")
    unet = load_model(folder / "unet.safetensors", "unet")[0]
    autoencoder = load_model(folder / "autoencoder.safetensors", "autoencoder")[0]
    torch.manual_seed(0)
    sd15 = UNetModel(SD15_LAYOUT).eval()
    motion = write_motion_module(folder / "mm_sd_v15_v2.safetensors", published_state_dict(sd15, "v2"))
    layers = ("format", "format_version", "unet_layout", "temporal_config", "train_frames", "modes")
    models = ("format", "kind", "config")
    checkpoint, read_checkpoint = toy_checkpoint(tmp_path_factory.mktemp("run"))
    cache = latent_cache(tmp_path_factory.mktemp("cache"))
    return {
        "temporal layers": Kind(folder / "temporal_layers/tiny-keyframe.safetensors", partial(load_temporal_layers, layout_of=find_layout(unet), prediction_type="eps"), layers),
        "temporal decoder": Kind(folder / "temporal_decoders/tiny-temporal_decoder.safetensors", partial(load_temporal_layers, layout_of=find_decoder_layout(autoencoder.decoder), target="VAE"), layers),
        "unet": Kind(folder / "unet.safetensors", partial(load_model, kind="unet"), models),
        "autoencoder": Kind(folder / "autoencoder.safetensors", partial(load_model, kind="autoencoder"), models),
        "text encoder": Kind(folder / "text_encoder.safetensors", partial(load_model, kind="text_encoder"), models),
        "motion module": Kind(motion, partial(load_temporal_layers, layout_of=partial(find_layout, sd15), prediction_type="eps")),
        "checkpoint": Kind(checkpoint, read_checkpoint, ("format", "format_version", "config", "config_hash", "position", "optimizer", "world_size"), floats=("module.", "ema.", "optim.")),
        "cached latents": Kind(cache / "clip.safetensors", read_cached_clip, ("settings",), beside={"index.json": (cache / "index.json").read_bytes()}),
    }


def toy_checkpoint(folder):
    """A checkpoint of a two-step toy run, and the resume check that reads it."""
    job, data = ToyJob(), ToyData()
    config = TrainConfig(output_dir=str(folder), steps=2, batch_size=2, ema_decay=0.5, checkpoint_every=2)
    train(job, data, config)
    record = _run_record(config, job, len(data))
    return folder / "checkpoint.safetensors", lambda path: _read_checkpoint(str(path), record, job.module)


CACHE_SETTINGS = {"frames": 2, "fps": 8.0, "size": [8, 8], "seed": 0, "encoder": "autoencoder:0123"}


def latent_cache(root):
    """A latent cache of one clip; returns its folder (root / the settings' hash)."""
    cache = LatentCache(root, CACHE_SETTINGS)
    cache.folder.mkdir(parents=True)
    cache.save(cache.folder / "clip.safetensors", torch.randn(2, 4, 8, 8), "video.mp4", "1:1", 0)
    (cache.folder / "index.json").write_text(json.dumps({"settings": cache.settings, "videos": [{"video": "video.mp4", "caption": "a red circle", "clips": ["clip.safetensors"]}]}))
    return cache.folder


def read_cached_clip(path):
    return LatentClips(LatentCache(path.parent.parent, CACHE_SETTINGS))[0]


# --- damage -----------------------------------------------------------------------


def truncated(data, draw):
    return data[: draw(strategies.integers(0, len(data) - 1))]


def flipped(data, draw):
    length = int.from_bytes(data[:8], "little")
    at = draw(strategies.integers(0, 8 + length - 1))
    return data[:at] + bytes([data[at] ^ (1 << draw(strategies.integers(0, 7)))]) + data[at + 1 :]


def rewritten(data, tensors=None, metadata=None):
    header, old_tensors, old_metadata = parts(data)
    return save_bytes(old_tensors if tensors is None else tensors, old_metadata if metadata is None else metadata)


@strategies.composite
def damage(draw, kind, data):
    """``(what, damaged bytes, always refused)``: byte flips may leave a file that
    still reads as a valid one (a digit of a setting changed), the rest may not."""
    _, tensors, metadata = parts(data)
    names = sorted(tensors)
    floats = [n for n in names if kind.floats is None or n.startswith(kind.floats)]
    choices = ["truncated", "flipped", "non-finite", "integer", "extra tensor", "missing tensor"] + (["key dropped", "junk value"] if kind.required else [])
    what = draw(strategies.sampled_from(choices))
    if what == "truncated":
        return what, truncated(data, draw), True
    if what == "flipped":
        return what, flipped(data, draw), False
    if what == "key dropped":
        key = draw(strategies.sampled_from(kind.required))
        return f"{what} {key}", rewritten(data, metadata={k: v for k, v in metadata.items() if k != key}), True
    if what == "junk value":
        key = draw(strategies.sampled_from(kind.required))
        return f"{what} {key}", rewritten(data, metadata={**metadata, key: draw(strategies.sampled_from(JUNK))}), True
    name = draw(strategies.sampled_from(floats if what in ("non-finite", "integer") else names))
    changed = dict(tensors)
    if what == "non-finite":
        tensor = changed[name].clone().flatten()
        tensor[draw(strategies.integers(0, len(tensor) - 1))] = draw(strategies.sampled_from((math.nan, math.inf, -math.inf)))
        changed[name] = tensor.reshape(tensors[name].shape)
    elif what == "integer":
        changed[name] = changed[name].to(draw(strategies.sampled_from((torch.int64, torch.int32, torch.uint8, torch.bool))))
    elif what == "extra tensor":
        changed[name + ".extra"] = torch.zeros(draw(strategies.integers(1, 4)))
    else:
        del changed[name]
    return f"{what} {name}", rewritten(data, tensors=changed), True


def refused_or_intact(read, path, always_refused, errors, what):
    """``read(path)`` raises one of ``errors`` (or, where the damage may leave a
    valid file, succeeds), and leaves the file and its folder as they were."""
    before, listing = digest(path), sorted(p.name for p in path.parent.iterdir())
    try:
        read(path)
    except errors as e:
        assert path.name in str(e) or "config" in str(e), f"{what}: the message does not name the file: {e}"
    else:
        assert not always_refused, f"{what}: loaded without complaint"
    assert digest(path) == before and sorted(p.name for p in path.parent.iterdir()) == listing, f"{what}: the file or its folder changed"


KINDS = ("temporal layers", "temporal decoder", "unet", "autoencoder", "text encoder", "motion module", "checkpoint", "cached latents")


@pytest.mark.parametrize("name", KINDS)
def test_a_damaged_weight_file_is_refused_by_name_and_left_as_it_was(weight_kinds, name):
    kind = weight_kinds[name]
    data = kind.path.read_bytes()
    kind.read(kind.path)  # intact, it loads

    @EXAMPLES
    @given(case=damage(kind, data))
    def check(case):
        what, damaged, always_refused = case
        with tempfile.TemporaryDirectory() as root:
            path = Path(root) / kind.path.parent.name / kind.path.name  # the cache's reader finds its folder by name
            path.parent.mkdir()
            path.write_bytes(damaged)
            for beside, contents in (kind.beside or {}).items():
                (path.parent / beside).write_bytes(contents)
            refused_or_intact(kind.read, path, always_refused, (WeightFileError, DataFileError), f"{name}, {what}")

    check()


def test_pickled_files_are_never_opened(weight_kinds, tmp_path):
    """A .ckpt beside the files: refused before a byte of it is read."""
    path = tmp_path / "mm_sd_v15_v2.ckpt"
    path.write_bytes(b"\x80\x04 not opened")
    with pytest.raises(WeightFileError, match="pickled file, which this pack never opens.*safetensors"):
        weight_kinds["motion module"].read(path)


# --- data files -------------------------------------------------------------------


def text_damage(text):
    """``(what, damaged text or bytes, always refused)`` for a UTF-8 text file."""
    data = text.encode()
    return strategies.one_of(
        strategies.integers(0, len(data) - 1).map(lambda n: ("truncated", data[:n], False)),
        strategies.tuples(strategies.integers(0, len(data) - 1), strategies.integers(0, 7)).map(lambda f: ("flipped", data[: f[0]] + bytes([data[f[0]] ^ (1 << f[1])]) + data[f[0] + 1 :], False)),
        strategies.integers(0, len(data)).map(lambda n: ("not UTF-8", data[:n] + b"\xff\xfe" + data[n:], True)),
    )


def bundle_json(folder):
    return json.loads((folder / "bundle.json").read_text())


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return write_tiny_bundle(tmp_path_factory.mktemp("data") / "tiny", upscaler=False)


@EXAMPLES
@given(data=strategies.data())
def test_a_damaged_bundle_json_is_refused_by_name(bundle, data):
    original = bundle_json(bundle)
    choice = data.draw(strategies.sampled_from(("text", "key dropped", "junk value")))
    if choice == "text":
        what, damaged, always = data.draw(text_damage(json.dumps(original)))
    else:
        key = data.draw(strategies.sampled_from(sorted(original)))
        values = {k: v for k, v in original.items() if k != key} if choice == "key dropped" else {**original, key: data.draw(strategies.sampled_from(("x", -1, 0, None, [], {}, [1], 1e308)))}
        what, damaged, always = f"{choice} {key}", json.dumps(values).encode(), True
    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / "tiny"
        shutil.copytree(bundle, copy)
        (copy / "bundle.json").write_bytes(damaged)
        refused_or_intact(lambda path: read_bundle(str(path.parent)), copy / "bundle.json", always, (WeightFileError,), f"bundle.json, {what}")


CONFIG = """
[job]
kind = "image"
prediction_type = "v"

[base]
autoencoder = "autoencoder.safetensors"

[model.unet]
model_channels = 32
channel_mult = [1, 2]

[data]
world = 100
frames = 1
fps = 8.0
size = [32, 32]

[train]
output_dir = "runs/x"
steps = 10
batch_size = 4
lr = 5e-4

[export]
path = "unet.safetensors"
text_encoder = "text_encoder.safetensors"
"""
WRONG_TYPES = {  # a line of CONFIG -> the same key with a value of the wrong type or range
    'kind = "image"': "kind = 3", "model_channels = 32": 'model_channels = "wide"', "frames = 1\n": "frames = -2\n",
    "size = [32, 32]": "size = [32]", "steps = 10": 'steps = "ten"', 'path = "unet.safetensors"': "path = 5", "lr = 5e-4": "lr = nan",
}


def read_training_config(path):
    check_config(read_config(path))


@EXAMPLES
@given(data=strategies.data())
def test_a_damaged_training_config_is_refused_by_name(data, tmp_path):
    choice = data.draw(strategies.sampled_from(("text", "wrong type")))
    if choice == "text":
        what, damaged, always = data.draw(text_damage(CONFIG))
    else:
        line = data.draw(strategies.sampled_from(sorted(WRONG_TYPES)))
        what, damaged, always = WRONG_TYPES[line].strip(), CONFIG.replace(line, WRONG_TYPES[line]).encode(), True
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "job.toml"
        path.write_bytes(damaged)
        refused_or_intact(read_training_config, path, always, (DataFileError,), f"config, {what}")


def test_the_intact_training_config_passes(tmp_path):
    path = tmp_path / "job.toml"
    path.write_text(CONFIG)
    read_training_config(path)


@EXAMPLES
@given(data=strategies.data())
def test_damaged_caption_files_are_refused_by_name(data):
    name = data.draw(strategies.sampled_from(("captions.jsonl", "captions.csv", "clip.txt")))
    text = {"captions.jsonl": '{"file": "clip.mp4", "caption": "a red circle"}\n', "captions.csv": "file,caption\nclip.mp4,a red circle\n", "clip.txt": "a red circle\n"}[name]
    choice = data.draw(strategies.sampled_from(("text", "junk line")))
    if choice == "text":
        what, damaged, always = data.draw(text_damage(text))
    else:
        junk = data.draw(strategies.sampled_from(('{"file": 3, "caption": "x"}', "[1, 2]", '{"file": "clip.mp4"}', "not json")))
        what, damaged, always = f"line {junk}", (text + junk + "\n").encode(), name == "captions.jsonl"
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "clip.mp4").write_bytes(b"")
        (Path(folder) / name).write_bytes(damaged)
        refused_or_intact(lambda path: find_videos(path.parent), Path(folder) / name, always, (DataFileError,), f"{name}, {what}")


def test_a_damaged_latent_cache_index_is_refused_by_name(tmp_path):
    folder = latent_cache(tmp_path)
    for damaged in ("{", "[]", '{"settings": {}, "videos": [{"video": "v", "caption": "c", "clips": ["../../elsewhere.safetensors"]}]}', '{"videos": 3}'):
        (folder / "index.json").write_text(damaged)
        with pytest.raises(DataFileError, match="index.json"):
            LatentClips(LatentCache(tmp_path, CACHE_SETTINGS))
        assert (folder / "index.json").read_text() == damaged


def test_a_config_asking_for_an_absurd_model_is_refused_before_it_is_allocated(weight_kinds, tmp_path):
    """A UNet of 16384 base channels would take tens of GB; built on the meta
    device and compared with the file's shapes, it costs nothing and is refused."""
    kind = weight_kinds["unet"]
    _, tensors, metadata = parts(kind.path.read_bytes())
    config = {**json.loads(metadata["config"]), "model_channels": 16384}
    path = tmp_path / "unet.safetensors"
    path.write_bytes(save_bytes(tensors, {**metadata, "config": json.dumps(config)}))
    with pytest.raises(WeightFileError, match="unet.safetensors does not hold the tensors of the model it describes"):
        kind.read(path)
    config["model_channels"] = 1 << 20
    path.write_bytes(save_bytes(tensors, {**metadata, "config": json.dumps(config)}))
    with pytest.raises(WeightFileError, match="model_channels = 1048576, outside 0 to 65536"):
        kind.read(path)
