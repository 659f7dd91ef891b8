"""The training CLI on SD checkpoints loaded through ComfyUI's own loaders.

Real SD checkpoints are gigabytes, so the tests register two tiny model
families with ComfyUI's detection (its ``supported_models.models`` list), as
a new checkpoint family would be registered: an SD 1.5 subclass and an x4
upscaler subclass with the tiny UNet's sizes and a tiny CLIP. The VAEs are
full-size (ComfyUI's SD VAE loader has fixed widths), with random weights.
ComfyUI's own ``save_checkpoint`` writes the files and its loaders read them,
in the CLI and in Load Checkpoint, so the trained layers meet the UNet the
nodes patch.
"""

import os

import pytest
import torch

from prompt_parts import key
from tiny_models import write_video

CONTEXT = 32
FRAMES = 4


def tiny_clip_target():
    import comfy.sd1_clip
    import comfy.supported_models_base

    config = {"hidden_size": CONTEXT, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "projection_dim": CONTEXT}

    class TinyClip(comfy.sd1_clip.SD1ClipModel):
        def __init__(self, device="cpu", dtype=None, model_options={}, **kwargs):
            options = {**model_options, "clip_l_model_config": config}
            super().__init__(device=device, dtype=dtype, model_options=options, **kwargs)

    return comfy.supported_models_base.ClipTarget(comfy.sd1_clip.SD1Tokenizer, TinyClip)


@pytest.fixture(scope="module")
def families(comfy):
    """Tiny SD 1.5 and x4-upscaler families, known to ComfyUI's detection for this module's tests."""
    import comfy.supported_models as supported

    class TinySD15(supported.SD15):
        unet_config = {**supported.SD15.unet_config, "model_channels": comfy.TINY_UNET["model_channels"], "context_dim": CONTEXT}

        def clip_target(self, state_dict={}):
            return tiny_clip_target()

    class TinyX4Upscaler(supported.SD_X4Upscaler):
        unet_config = {**supported.SD_X4Upscaler.unet_config, "model_channels": comfy.TINY_UNET["model_channels"], "context_dim": CONTEXT}
        unet_extra_config = {**supported.SD_X4Upscaler.unet_extra_config, "disable_self_attentions": [True, False]}  # per level
        process_clip_state_dict = supported.SD15.process_clip_state_dict  # its tiny CLIP is stored as SD 1.5 stores CLIP-L
        process_clip_state_dict_for_saving = supported.SD15.process_clip_state_dict_for_saving

        def clip_target(self, state_dict={}):
            return tiny_clip_target()

    supported.models[:0] = [TinySD15, TinyX4Upscaler]
    yield TinySD15, TinyX4Upscaler
    del supported.models[:2]


def write_checkpoint(comfy, family, path, unet_changes, vae_config):
    """A checkpoint of ``family`` with random weights, written by ComfyUI's save_checkpoint."""
    import comfy.sd as comfy_sd

    autoencoder = comfy.module("vldm_core.autoencoder")
    config = family(dict(comfy.TINY_UNET, context_dim=CONTEXT, **unet_changes))
    model = comfy.random_weights(config.get_model({}), seed=0)
    clip = comfy_sd.CLIP(config.clip_target())
    with torch.random.fork_rng():
        torch.manual_seed(1)
        for p in clip.cond_stage_model.parameters():
            torch.nn.init.normal_(p, std=0.02)
        vae = comfy_sd.VAE(sd=autoencoder.AutoencoderKL(autoencoder.AutoencoderConfig(**vae_config)).state_dict())
    comfy_sd.save_checkpoint(str(path), model, clip, vae)
    return path


SD_VAE = dict(ch=128, ch_mult=(1, 2, 4, 4), num_res_blocks=2)  # the widths ComfyUI's loader builds
X4_VAE = dict(ch=128, ch_mult=(1, 2, 4), num_res_blocks=2)  # f4


@pytest.fixture(scope="module")
def checkpoints(comfy, families, tmp_path_factory):
    folder = tmp_path_factory.mktemp("checkpoints")
    comfy.folder_paths.add_model_folder_path("checkpoints", str(folder))
    sd15, x4 = families
    return {
        "sd15": write_checkpoint(comfy, sd15, folder / "vldm_tiny_sd15.safetensors", {}, SD_VAE),
        "x4": write_checkpoint(comfy, x4, folder / "vldm_tiny_x4.safetensors", {"in_channels": 7, "use_linear_in_transformer": True}, X4_VAE),
    }


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("videos")
    for i in range(2):
        write_video(folder / f"clip{i}.mp4", frames=8, fps=8, width=32, height=32)
        (folder / f"clip{i}.txt").write_text("a red square moving right")
    return folder


def config(checkpoint, videos, out, kind="temporal_layers", **job):
    return {
        "job": {"kind": kind, **job},
        "base": {"checkpoint": str(checkpoint)},
        "layers": {"context_latent_channels": 4 if "prediction" in job.get("modes", ()) else 0},
        "data": {"videos": str(videos), "frames": FRAMES, "fps": 8.0, "size": [32, 32]},
        "train": {"output_dir": str(out / "run"), "steps": 2, "batch_size": 2, "lr": 1e-2, "checkpoint_every": 2, "log_every": 1},
        "export": {"path": str(out / "trained.safetensors")},
    }


def test_layers_trained_on_an_sd_checkpoint_load_onto_that_checkpoint_in_comfyui(comfy, checkpoints, videos, tmp_path):
    name = "vldm_test_from_checkpoint.safetensors"
    values = config(checkpoints["sd15"], videos, tmp_path, modes=["keyframe", "prediction"])
    values["export"]["path"] = os.path.join(comfy.temporal_layers_dir, name)  # where the patcher finds it
    comfy.module("vldm_core.train.cli").run(values)

    def sample(layer_file):
        capture = key()
        result = comfy.run({
            "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoints["sd15"].name}},
            "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a red square moving right"}},
            "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
            "4": {"class_type": "VLDM_TemporalUNetPatcher", "inputs": {"model": ["1", 0], "temporal_layers": layer_file}},
            "5": {"class_type": "VLDM_KeyframeSampler", "inputs": {
                "model": ["4", 0], "positive": ["2", 0], "negative": ["3", 0], "frames": FRAMES, "width": 32, "height": 32,
                "frame_rate": 8.0, "seed": 3, "steps": 2, "cfg": 3.0, "sampler_name": "euler", "scheduler": "normal",
            }},
            "6": {"class_type": "VLDMTest_CaptureLatent", "inputs": {"samples": ["5", 0], "key": capture}},
        })
        assert result.ok, result.messages
        return comfy.captured[capture]

    bridge = comfy.module("nodes.comfy_bridge")
    with_trained, fresh = sample(name), sample(bridge.FRESH)
    assert with_trained.shape == (FRAMES, 4, 4, 4) and torch.isfinite(with_trained).all()
    assert (with_trained - fresh).abs().max() > 1e-4  # the trained layers act on the checkpoint's UNet


def test_upscaler_layers_train_on_an_x4_checkpoint_and_load_onto_it(comfy, checkpoints, videos, tmp_path):
    cli, weights, layout = comfy.module("vldm_core.train.cli"), comfy.module("vldm_core.weights"), comfy.module("vldm_core.unet_layout")
    trained = cli.run(config(checkpoints["x4"], videos, tmp_path, kind="upscaler", patch=4))
    import comfy.sd as comfy_sd

    model = comfy_sd.load_checkpoint_guess_config(str(checkpoints["x4"]), output_clip=False, output_vae=False)[0]
    layers = weights.load_temporal_layers(trained, layout.find_layout(model.model.diffusion_model), prediction_type="v")
    assert layers.modes == ("upscaler",) and layers.train_frames == FRAMES


def test_a_temporal_decoder_trains_on_a_checkpoints_vae(comfy, checkpoints, videos, tmp_path):
    cli, weights, decoder = comfy.module("vldm_core.train.cli"), comfy.module("vldm_core.weights"), comfy.module("vldm_core.temporal_decoder")
    trained = cli.run(config(checkpoints["sd15"], videos, tmp_path, kind="temporal_decoder"))
    import comfy.sd as comfy_sd

    vae = comfy_sd.load_checkpoint_guess_config(str(checkpoints["sd15"]), output_model=False, output_clip=False)[2]
    layers = weights.load_temporal_layers(trained, decoder.find_decoder_layout(vae.first_stage_model.decoder), target="VAE")
    assert layers.modes == ("decoder",) and any(layer.conv2.weight.abs().sum() > 0 for layer in layers.layers.values())


@pytest.mark.parametrize("kind, checkpoint, message", [
    ("temporal_layers", "x4", "vldm_tiny_x4.safetensors is a TinyX4Upscaler checkpoint (SD_X4Upscaler): a temporal_layers job trains on an SD 1.x or 2.x checkpoint"),
    ("upscaler", "sd15", "vldm_tiny_sd15.safetensors is a TinySD15 checkpoint (BaseModel): an upscaler job trains on the SD x4 upscaler"),
])
def test_a_checkpoint_of_the_wrong_family_is_refused_before_training(comfy, checkpoints, videos, tmp_path, kind, checkpoint, message):
    cli = comfy.module("vldm_core.train.cli")
    with pytest.raises(ValueError) as error:
        cli.run(config(checkpoints[checkpoint], videos, tmp_path, kind=kind))
    assert message in str(error.value)
    assert not (tmp_path / "run").exists()


def test_files_that_are_no_checkpoint_are_refused_with_the_fix(comfy, videos, tmp_path):
    from safetensors.torch import save_file

    cli = comfy.module("vldm_core.train.cli")
    pickled = tmp_path / "model.ckpt"
    pickled.write_bytes(b"\x80\x04not a checkpoint")
    with pytest.raises(ValueError, match="not a .safetensors file: this pack never unpickles weights; convert it to safetensors"):
        cli.run(config(pickled, videos, tmp_path))
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(b"\x10\x00\x00")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        cli.run(config(truncated, videos, tmp_path))
    lora = tmp_path / "lora.safetensors"
    save_file({"lora_unet_down.alpha": torch.ones(1)}, str(lora))
    with pytest.raises(ValueError, match="ComfyUI does not recognise lora.safetensors as a checkpoint"):
        cli.run(config(lora, videos, tmp_path))
