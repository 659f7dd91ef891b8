"""``python -m vldm_core.train``: a config file trains temporal layers on the
pack's own small models from a folder of videos and exports the file the nodes
load; bad configs are refused before anything is loaded."""

import json
import os
import socket
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import safetensors
import torch
from safetensors import safe_open

from vldm_core.autoencoder import AutoencoderConfig, AutoencoderKL
from vldm_core.model_files import load_model, save_model
from vldm_core.text_encoder import TextEncoder, TextEncoderConfig
from vldm_core.train.cli import check_config, read_config, run
from vldm_core.unet import UNetConfig, UNetModel
from vldm_core.temporal import TemporalLayers
from vldm_core.temporal_decoder import find_decoder_layout
from vldm_core.unet_layout import find_layout
from vldm_core.weights import WeightFileError, load_temporal_layers

from animatediff_reference import published_state_dict
from tiny_models import SD15_LAYOUT, write_motion_module, write_video

TEXT = TextEncoderConfig(dim=24, layers=1, heads=2)
REPO = str(Path(__file__).parents[2])


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    folder = tmp_path_factory.mktemp("base")
    torch.manual_seed(0)
    save_model(UNetModel(UNetConfig(model_channels=32, channel_mult=(1, 2), head_dim=16, context_dim=TEXT.dim)), folder / "unet.safetensors", prediction_type="eps")
    save_model(TextEncoder(TEXT), folder / "text.safetensors")
    save_model(AutoencoderKL(), folder / "ae.safetensors", latent_scale=0.5)
    videos = folder / "videos"
    for i in range(3):
        write_video(videos / f"clip{i}.mp4", frames=12, fps=8, width=64, height=64)
        (videos / f"clip{i}.txt").write_text("a red square moving right")
    return folder


def config(base, out, **changes):
    values = {
        "job": {"kind": "temporal_layers", "modes": ["keyframe", "prediction"]},
        "base": {"unet": str(base / "unet.safetensors"), "text_encoder": str(base / "text.safetensors"), "autoencoder": str(base / "ae.safetensors")},
        "layers": {"context_latent_channels": 4},
        "data": {"videos": str(base / "videos"), "frames": 4, "fps": 8.0, "size": [64, 64]},
        "train": {"output_dir": str(out / "run"), "steps": 4, "batch_size": 2, "lr": 1e-3, "ema_decay": 0.5, "checkpoint_every": 4, "log_every": 2},
        "export": {"path": str(out / "layers.safetensors")},
    }
    for key, value in changes.items():
        name, field = key.split("__")
        values[name][field] = value
    return values


def test_a_config_trains_and_exports_a_file_the_nodes_load(base, tmp_path):
    path = run(config(base, tmp_path))
    unet, _ = load_model(base / "unet.safetensors", "unet")
    layers = load_temporal_layers(path, find_layout(unet), prediction_type="eps")
    assert layers.train_frames == 4 and layers.modes == ("keyframe", "prediction")
    assert any(layer.conv2.weight.abs().sum() > 0 for layer in layers.layers.values() if hasattr(layer, "conv2"))  # trained off zero
    with pytest.raises(FileExistsError, match="never written over"):
        run(config(base, tmp_path))


def test_trained_temporal_layers_train_on_from_their_file(base, tmp_path):
    """layers.start: the whole file trains on (e.g. on a base trained further), keeping its settings."""
    first = run(config(base, tmp_path / "first", layers__alpha_init=0.3))
    unet, _ = load_model(base / "unet.safetensors", "unet")
    start = load_temporal_layers(first, find_layout(unet), prediction_type="eps")

    def train_on(name, lr, **changes):
        values = config(base, tmp_path / name, train__lr=lr, **changes)
        values["layers"] = {"start": str(first)}
        return load_temporal_layers(run(values), find_layout(unet), prediction_type="eps")

    still, moved = train_on("still", 0.0, train__ema_decay=0.0), train_on("moved", 1e-2)
    assert still.config == moved.config == start.config and still.modes == start.modes and still.train_frames == 4
    assert all(torch.equal(a, b) for a, b in zip(still.state_dict().values(), start.state_dict().values()))  # lr 0: the start, exactly
    assert not all(torch.equal(a, b) for a, b in zip(moved.state_dict().values(), start.state_dict().values()))
    with pytest.raises(ValueError, match="trained for keyframe, prediction, not interpolation: set job.modes"):
        train_on("modes", 1e-3, job__modes=["keyframe", "interpolation"])
    with pytest.raises(ValueError, match="trained on 4 frames .* set data.frames = 4"):
        train_on("frames", 1e-3, data__frames=3)


def test_a_temporal_decoder_trains_from_the_autoencoder_alone(base, tmp_path):
    values = config(base, tmp_path, job__kind="temporal_decoder", layers__context_latent_channels=0)
    del values["base"]["unet"], values["base"]["text_encoder"], values["job"]["modes"]
    path = run(values)
    autoencoder, _ = load_model(base / "ae.safetensors", "autoencoder")
    layers = load_temporal_layers(path, find_decoder_layout(autoencoder.decoder), target="VAE")
    assert layers.modes == ("decoder",) and layers.train_frames == 4
    assert any(layer.conv2.weight.abs().sum() > 0 for layer in layers.layers.values())


def test_an_upscaler_trains_on_clips_and_their_smaller_selves(base, tmp_path):
    torch.manual_seed(1)
    upscaler = UNetModel(UNetConfig(in_channels=7, model_channels=32, channel_mult=(1, 2), head_dim=16, context_dim=TEXT.dim, num_classes=351))
    save_model(upscaler, tmp_path / "x4.safetensors", prediction_type="v")
    save_model(AutoencoderKL(AutoencoderConfig(ch_mult=(1, 2, 2))), tmp_path / "ae_f4.safetensors")  # the x4 upscaler's VAE is f4
    values = config(base, tmp_path, job__kind="upscaler", layers__context_latent_channels=0, base__unet=str(tmp_path / "x4.safetensors"),
                    base__autoencoder=str(tmp_path / "ae_f4.safetensors"), job__patch=8)
    del values["job"]["modes"]
    path = run(values)
    layers = load_temporal_layers(path, find_layout(upscaler), prediction_type="v")
    assert layers.modes == ("upscaler",) and layers.train_frames == 4


def test_latents_can_be_encoded_once_into_a_cache(base, tmp_path):
    run(config(base, tmp_path, data__latent_cache=str(tmp_path / "cache")))
    assert list((tmp_path / "cache").rglob("*.safetensors"))


@pytest.mark.parametrize("changes, message", [
    (dict(job__kind="lora"), "job.kind 'lora'"),
    (dict(layers__alpha=0.3), "unknown key layers.alpha"),
    (dict(train__learning_rate=1e-3), "unknown training settings ['learning_rate']"),
    (dict(data__fps=None), "data.fps is required"),
    (dict(base__unet=""), "the pack's own model files need base.unet too"),
    (dict(base__checkpoint="sd15.safetensors"), "one source of the frozen models (base.checkpoint and the pack's own model files)"),
    (dict(base__vae="vae.safetensors"), "base.vae is not used: temporal_layers jobs take base.checkpoint or"),
    (dict(base__unet="", base__text_encoder="", base__autoencoder=""), "one source of the frozen models (none given): temporal_layers jobs take base.checkpoint or base.autoencoder + base.text_encoder + base.unet"),
    (dict(job__kind="temporal_decoder", base__vae="vae.safetensors"), "(base.vae and the pack's own model files)"),
    (dict(layers__init="mm_sd_v15_v2.safetensors"), "with layers.init only the context branch trains: set layers.context_latent_channels and job.modes to prediction"),
    (dict(layers__init="mm_sd_v15_v2.safetensors", layers__alpha_init=0.3, job__modes=["prediction"]), "layers.alpha_init does not apply with layers.init"),
    (dict(layers__init="mm_sd_v15_v2.safetensors", job__kind="upscaler"), "layers.init is for temporal_layers jobs"),
    (dict(layers__start="keyframe.safetensors"), "layers.context_latent_channels does not apply with layers.start: the file brings its own settings"),
    (dict(layers__start="keyframe.safetensors", job__kind="upscaler"), "layers.start is for temporal_layers jobs"),
])
def test_config_problems_are_named_before_anything_loads(base, tmp_path, changes, message):
    values = config(base, tmp_path, **{k: v for k, v in changes.items() if v is not None})
    if None in changes.values():
        del values["data"]["fps"]
    with pytest.raises(ValueError) as error:
        check_config(values)
    assert message in str(error.value)


def test_a_context_branch_trains_on_a_frozen_animatediff_motion_module(base, tmp_path):
    torch.manual_seed(0)
    unet = UNetModel(SD15_LAYOUT)
    save_model(unet, tmp_path / "unet_sd15.safetensors", prediction_type="eps")
    save_model(TextEncoder(TextEncoderConfig(vocab=512, dim=SD15_LAYOUT.context_dim, layers=1, heads=2)), tmp_path / "text_768.safetensors")
    module = write_motion_module(tmp_path / "mm.safetensors", published_state_dict(unet, "v2", seed=1))
    values = config(base, tmp_path, base__unet=str(tmp_path / "unet_sd15.safetensors"), base__text_encoder=str(tmp_path / "text_768.safetensors"),
                    layers__init=str(module), layers__interpolation_stage=True, job__modes=["prediction", "interpolation"], data__frames=5)
    layers = load_temporal_layers(run(values), partial(find_layout, unet), prediction_type="eps")
    assert layers.modes == ("keyframe", "prediction", "interpolation") and layers.train_frames == 5
    assert layers.config.version == "v2" and layers.config.context_channels == 6
    trained = layers.state_dict()
    assert all(torch.equal(trained[k], v) for k, v in load_temporal_layers(module, partial(find_layout, unet)).state_dict().items())  # frozen
    assert all(layer.context_proj.weight.abs().sum() > 0 for layer in layers.layers.values())  # the branch trained off zero


def test_a_base_file_of_the_wrong_kind_is_refused(base, tmp_path):
    with pytest.raises(WeightFileError, match="of kind 'text_encoder'; this needs kind 'unet'"):
        run(config(base, tmp_path, base__unet=str(base / "text.safetensors")))


def toml(values):
    """A config file's text; the values here are strings, numbers and lists of them."""
    def literal(value):
        return json.dumps(value) if not isinstance(value, bool) else str(value).lower()

    return "\n".join(f"[{name}]\n" + "\n".join(f"{key} = {literal(value)}" for key, value in section.items()) for name, section in values.items())


def test_the_same_command_trains_under_torchrun_with_two_gloo_ranks(base, tmp_path):
    path = tmp_path / "job.toml"
    path.write_text(toml(config(base, tmp_path, job__modes=["keyframe"], layers__context_latent_channels=0)))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(port), "-m", "vldm_core.train", str(path)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1"}, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    unet, _ = load_model(base / "unet.safetensors", "unet")
    assert load_temporal_layers(tmp_path / "layers.safetensors", find_layout(unet), prediction_type="eps").modes == ("keyframe",)
    checkpoint = safetensors.safe_open(str(tmp_path / "run" / "checkpoint.safetensors"), "pt")
    assert checkpoint.metadata()["world_size"] == "2"
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert steps == [2, 4]  # rank 0 logs alone


@pytest.mark.parametrize("path", sorted((Path(REPO) / "configs").rglob("*.toml")), ids=lambda p: p.name)
def test_the_shipped_configs_pass_their_checks(path):
    check_config(read_config(path))


def test_the_bundled_models_configs_form_one_chain_that_writes_each_bundle_file_once():
    """Run in file-name order (the model card's), every config reads only files
    that an earlier one wrote, no two write the same file, and every file of
    the bundle is written by one of them: the model card's commands rebuild it."""
    written = {}
    for path in sorted((Path(REPO) / "configs" / "videoldm-shapes").glob("*.toml")):
        config = read_config(path)
        reads = [config.get("base", {}).get(part) for part in ("unet", "text_encoder", "autoencoder")] + [config.get("layers", {}).get("start")]
        unwritten = [file for file in reads if file and file not in written]
        assert not unwritten, f"{path.name} reads {unwritten}, which no config before it writes"
        for file in filter(None, (config["export"]["path"], config["export"].get("text_encoder"))):
            assert file not in written, f"{path.name} and {written[file]} both write {file}"
            written[file] = path.name
    bundle = Path(REPO) / "models" / "videoldm-shapes"
    files = json.loads((bundle / "bundle.json").read_text())["files"].values()
    assert sorted({f"models/videoldm-shapes/{file}" for file in files} - set(written)) == []


def test_the_command_line_shows_help_with_an_example_config():
    result = subprocess.run([sys.executable, "-m", "vldm_core.train", "--help"], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0 and "[train]" in result.stdout and "--resume" in result.stdout


def test_the_image_stage_trains_from_scratch_into_files_the_video_stage_loads(base, tmp_path):
    """autoencoder -> image LDM (UNet + caption encoder) -> x4-style upscaler UNet, each from the one before."""
    small_ae = {"ch": 16, "ch_mult": [1, 1, 2, 2], "norm_groups": 8}
    loop = {"output_dir": "", "steps": 2, "batch_size": 2, "lr": 1e-3, "checkpoint_every": 2, "log_every": 1}
    data = {"world": 4, "frames": 2, "fps": 8.0, "size": [32, 32]}  # the synthetic world the bundled model learns

    def job(name, kind, **sections):
        return run({"job": {"kind": kind}, "data": data, "train": {**loop, "output_dir": str(tmp_path / name)},
                    "export": {"path": str(tmp_path / f"{name}.safetensors")}, **sections})

    with pytest.warns(UserWarning, match="has norm_groups = 8: ComfyUI's VAE always has 32 GroupNorm groups"):  # small, so tests stay fast
        ae_path = job("ae", "autoencoder", model={"autoencoder": small_ae})
    autoencoder, metadata = load_model(ae_path, "autoencoder")
    assert autoencoder.config.ch == 16 and float(metadata["latent_scale"]) > 0

    text = {"dim": 24, "layers": 1, "heads": 2}
    unet_path = job("image", "image", base={"autoencoder": ae_path}, model={"unet": {"context_dim": 24}, "text_encoder": text},
                    export={"path": str(tmp_path / "unet.safetensors"), "text_encoder": str(tmp_path / "text.safetensors")})
    unet, unet_meta = load_model(unet_path, "unet")
    text_encoder, _ = load_model(tmp_path / "text.safetensors", "text_encoder")
    assert unet_meta["prediction_type"] == "eps" and text_encoder.config.dim == 24
    assert TemporalLayers(find_layout(unet))  # a UNet the temporal layers fit

    save_model(AutoencoderKL(AutoencoderConfig(ch_mult=(1, 2, 2), **{k: v for k, v in small_ae.items() if k != "ch_mult"})), tmp_path / "ae_f4.safetensors")
    up_path = job("up", "image_upscaler", base={"autoencoder": str(tmp_path / "ae_f4.safetensors"), "text_encoder": str(tmp_path / "text.safetensors")},
                  job={"kind": "image_upscaler", "prediction_type": "v", "patch": 4},
                  model={"unet": {"in_channels": 7, "context_dim": 24, "num_classes": 351}})
    upscaler, up_meta = load_model(up_path, "unet")
    assert upscaler.config.num_classes == 351 and up_meta["prediction_type"] == "v"


def test_an_autoencoder_fine_tunes_from_a_file_at_another_frame_size(tmp_path):
    start = AutoencoderKL(AutoencoderConfig(ch=16, ch_mult=(1, 2, 2), norm_groups=8))
    save_model(start, tmp_path / "start.safetensors", latent_scale=1.0)
    loop = {"steps": 2, "batch_size": 2, "checkpoint_every": 2, "log_every": 1}
    data = {"world": 4, "frames": 1, "fps": 8.0, "size": [64, 64]}
    for name, lr in (("still", 0.0), ("moved", 1e-3)):
        with pytest.warns(UserWarning, match="norm_groups = 8"):
            run({"job": {"kind": "autoencoder"}, "base": {"autoencoder": str(tmp_path / "start.safetensors")}, "data": data,
                 "train": {**loop, "lr": lr, "output_dir": str(tmp_path / name)}, "export": {"path": str(tmp_path / f"{name}.safetensors"), "ema": False}})
    still, metadata = load_model(tmp_path / "still.safetensors", "autoencoder")
    moved, _ = load_model(tmp_path / "moved.safetensors", "autoencoder")
    assert still.config == start.config and float(metadata["latent_scale"]) != 1.0  # measured again, on the new frames
    assert all(torch.equal(a, b) for a, b in zip(still.state_dict().values(), start.state_dict().values()))  # lr 0: the start, exactly
    assert not all(torch.equal(a, b) for a, b in zip(moved.state_dict().values(), start.state_dict().values()))

    with pytest.warns(UserWarning, match="norm_groups = 8"):
        run({"job": {"kind": "autoencoder"}, "base": {"autoencoder": str(tmp_path / "start.safetensors")}, "data": data,
             "train": {**loop, "lr": 0.0, "output_dir": str(tmp_path / "half")}, "export": {"path": str(tmp_path / "half.safetensors"), "ema": False, "dtype": "float16"}})
    with safe_open(str(tmp_path / "half.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16} and f.metadata()["latent_scale"] == metadata["latent_scale"]
    half, _ = load_model(tmp_path / "half.safetensors", "autoencoder")
    assert all(torch.equal(a, b.half().float()) for a, b in zip(half.state_dict().values(), start.state_dict().values()))
    assert (tmp_path / "half.safetensors").stat().st_size < 0.6 * (tmp_path / "still.safetensors").stat().st_size


def test_an_image_model_fine_tunes_from_its_exported_files(base, tmp_path):
    """An image job trains on from exported files (the way on when a checkpoint is lost)."""
    loop = {"steps": 2, "batch_size": 2, "checkpoint_every": 2, "log_every": 1, "ema_decay": 0.0}
    data = {"world": 4, "frames": 1, "fps": 8.0, "size": [64, 64]}
    files = {"unet": str(base / "unet.safetensors"), "text_encoder": str(base / "text.safetensors"), "autoencoder": str(base / "ae.safetensors")}

    def fine_tune(name, lr, **job):
        run({"job": {"kind": "image", **job}, "base": files, "data": data, "train": {**loop, "lr": lr, "output_dir": str(tmp_path / name)},
             "export": {"path": str(tmp_path / f"{name}_unet.safetensors"), "text_encoder": str(tmp_path / f"{name}_text.safetensors"), "ema": False}})
        return [load_model(tmp_path / f"{name}_{part}.safetensors", kind)[0] for part, kind in (("unet", "unet"), ("text", "text_encoder"))]

    for name, lr in (("still", 0.0), ("moved", 1e-3)):
        models = fine_tune(name, lr)
        for model, start in zip(models, [load_model(files[kind], kind)[0] for kind in ("unet", "text_encoder")]):
            assert model.config == start.config
            same = [torch.equal(a, b) for a, b in zip(model.state_dict().values(), start.state_dict().values())]
            assert all(same) if lr == 0 else not all(same)  # lr 0: the start, exactly; else trained on
    with pytest.raises(ValueError, match="predicts 'eps', the job 'v': set job.prediction_type = 'eps'"):
        fine_tune("other", 1e-3, prediction_type="v")


def test_an_image_unet_fine_tunes_with_a_new_caption_encoder(base, tmp_path):
    """base.unet alone: the UNet trains on from its file, the caption encoder is a new one of [model.text_encoder]."""
    start, _ = load_model(base / "unet.safetensors", "unet")
    text = {"dim": start.config.context_dim, "max_tokens": 8, "layers": 1, "heads": 2}
    run({"job": {"kind": "image"}, "base": {"unet": str(base / "unet.safetensors"), "autoencoder": str(base / "ae.safetensors")},
         "model": {"text_encoder": text}, "data": {"world": 4, "frames": 1, "fps": 8.0, "size": [64, 64]},
         "train": {"steps": 2, "batch_size": 2, "checkpoint_every": 2, "log_every": 1, "lr": 0.0, "output_dir": str(tmp_path / "run")},
         "export": {"path": str(tmp_path / "unet.safetensors"), "text_encoder": str(tmp_path / "text.safetensors"), "ema": False}})
    unet, _ = load_model(tmp_path / "unet.safetensors", "unet")
    text_encoder, _ = load_model(tmp_path / "text.safetensors", "text_encoder")
    assert all(torch.equal(a, b) for a, b in zip(unet.state_dict().values(), start.state_dict().values()))  # lr 0: the start, exactly
    assert (text_encoder.config.max_tokens, text_encoder.config.layers) == (8, 1)


@pytest.mark.parametrize("values, message", [
    ({"job": {"kind": "image"}, "base": {"autoencoder": "a.safetensors", "text_encoder": "t.safetensors"}, "export": {"path": "p", "text_encoder": "t"}},
     "fine-tuning starts from base.unet (+ base.text_encoder or a new one from [model.text_encoder]): give base.unet, or none of them"),
    ({"job": {"kind": "image"}, "base": {"autoencoder": "a.safetensors", "unet": "u.safetensors", "text_encoder": "t.safetensors"},
      "model": {"unet": {"model_channels": 64}}, "export": {"path": "p", "text_encoder": "t"}}, "[model.unet] is for models trained from scratch"),
    ({"job": {"kind": "autoencoder"}, "base": {"unet": "u.safetensors"}}, "base.unet is not used: autoencoder jobs take no base models (they train from scratch); base.autoencoder to fine-tune"),
    ({"job": {"kind": "autoencoder"}, "base": {"autoencoder": "a.safetensors"}, "model": {"autoencoder": {"ch": 64}}}, "base.autoencoder brings its own config"),
    ({"job": {"kind": "autoencoder"}, "export": {"path": "p", "dtype": "bfloat16"}}, "export.dtype 'bfloat16': choose one of float32, float16"),
    ({"job": {"kind": "image"}, "base": {"autoencoder": "a.safetensors"}}, "export.text_encoder is required for image jobs"),
    ({"job": {"kind": "autoencoder"}, "model": {"autoencoder": {"channels": 8}}}, "unknown key model.autoencoder.channels"),
    ({"job": {"kind": "image_upscaler"}, "base": {"autoencoder": "a.safetensors"}}, "the pack's own model files need base.text_encoder too"),
    ({"job": {"kind": "autoencoder"}, "data": {"videos": "v", "world": 8, "frames": 2, "fps": 8.0, "size": [32, 32]}}, "[data] takes videos"),
])
def test_image_stage_config_problems_are_named(values, message):
    config = {"data": {"videos": "v", "frames": 2, "fps": 8.0, "size": [32, 32]}, "train": {"output_dir": "o"}, "export": {"path": "p"}, **values}
    with pytest.raises(ValueError) as error:
        check_config(config)
    assert message in str(error.value)


def test_a_perceptual_loss_joins_the_temporal_decoder_from_lpips_weights(base, tmp_path):
    from safetensors.torch import save_file
    from vldm_core.train.perceptual import LPIPS

    g = torch.Generator().manual_seed(0)
    weights = {k: (v + 0.05 * torch.randn(v.shape, generator=g)).contiguous() for k, v in LPIPS().state_dict().items()}
    weights.update({k: v.abs() for k, v in weights.items() if k.startswith("lin")})  # random, with non-negative heads as trained ones have
    save_file(weights, str(tmp_path / "lpips_vgg.safetensors"))
    values = config(base, tmp_path, job__kind="temporal_decoder", layers__context_latent_channels=0, job__perceptual_weights=str(tmp_path / "lpips_vgg.safetensors"))
    del values["base"]["unet"], values["base"]["text_encoder"], values["job"]["modes"]
    values["data"]["size"] = [32, 32]
    run(values)
    logged = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert all(set(line["terms"]) == {"reconstruction", "adversarial", "discriminator", "perceptual"} for line in logged)
    assert all(line["terms"]["perceptual"] > 0 for line in logged)
    assert set(logged[-1]["grad_norms"]) == {"temporal", "discriminator"}
