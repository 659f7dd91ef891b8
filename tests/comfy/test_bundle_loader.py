"""The bundle loaders in a real ComfyUI, on a tiny random bundle: the pack's own
UNet, caption encoder and autoencoder become ComfyUI's MODEL, CLIP and VAE that
compute what the pack's modules compute, and run through every node as an SD
checkpoint's outputs do; broken bundles are refused with the fix."""

import json
import logging
import os
import shutil
from pathlib import Path

import pytest
import torch

from prompt_parts import IMAGES, CaptureImage, key
from tiny_models import write_tiny_bundle

NAME = "vldm-test-tiny"  # the bundle, in ComfyUI's models/video_ldm
NO_UPSCALER = "vldm-test-no-upscaler"
KEYFRAME, DECODER, UPSCALER_LAYERS = (f"{NAME}-{file}.safetensors" for file in ("keyframe", "temporal_decoder", "upscaler_layers"))  # as write_tiny_bundle names them
PROMPT = "a red ball bounces"


@pytest.fixture(scope="module")
def loader(comfy):
    comfy.add_nodes({"VLDMTest_CaptureImage": CaptureImage})
    return comfy.module("nodes.bundle_loader")


@pytest.fixture(scope="module")
def bundle(comfy, loader):
    """Tiny bundles in ComfyUI's models/video_ldm, registered as the loader's
    combo does; removed afterwards, with their temporal folders."""
    base = Path(comfy.folder_paths.get_folder_paths("video_ldm")[0])
    folders = [write_tiny_bundle(base / NAME), write_tiny_bundle(base / NO_UPSCALER, upscaler=False, seed=1)]
    loader.register_bundle_folders()
    yield folders[0]
    remove_bundles(comfy, folders)


def remove_bundles(comfy, folders):
    """Delete bundle folders: the next listing of bundles takes their temporal
    folders out of ComfyUI's lists, as after a user deletes a bundle."""
    for folder in folders:
        shutil.rmtree(folder)
    options(comfy, "VLDM_BundleLoader", "bundle")
    for name in ("temporal_layers", "temporal_decoders"):
        assert not [p for p in comfy.folder_paths.get_folder_paths(name) if any(p.startswith(str(folder) + os.sep) for folder in folders)]
        comfy.folder_paths.get_filename_list(name)  # lists again without the deleted folders


def own(comfy, folder, part, kind):
    """The pack's own module of one bundle file: the reference."""
    return comfy.module("vldm_core.model_files").load_model(str(folder / part), kind)


def options(comfy, node, name):
    return comfy.nodes.NODE_CLASS_MAPPINGS[node].INPUT_TYPES()["required"][name][1]["options"]


def test_bundles_and_their_temporal_files_are_listed(comfy, loader, bundle):
    assert comfy.folder_paths.get_folder_paths("video_ldm")[:2] == [os.path.join(comfy.folder_paths.models_dir, "video_ldm"), loader.PACK_MODELS]
    assert {NAME, NO_UPSCALER} <= set(options(comfy, "VLDM_BundleLoader", "bundle"))
    upscalers = options(comfy, "VLDM_BundleUpscalerLoader", "bundle")
    assert NAME in upscalers and NO_UPSCALER not in upscalers
    assert {KEYFRAME, f"{NAME}-context.safetensors", UPSCALER_LAYERS} <= set(options(comfy, "VLDM_TemporalUNetPatcher", "temporal_layers"))
    assert DECODER in options(comfy, "VLDM_TemporalVAEDecode", "temporal_decoder")
    listed = comfy.folder_paths.get_filename_list("temporal_layers")
    assert not [n for n in listed if n.endswith(("unet.safetensors", "autoencoder.safetensors", "text_encoder.safetensors"))]


def test_same_named_temporal_files_of_two_bundles_are_warned_about(comfy, loader, bundle, caplog):
    copy = bundle.parent / "vldm-test-copy"
    shutil.copytree(bundle, copy)  # its temporal files keep the names of NAME's
    try:
        with caplog.at_level(logging.WARNING):
            loader.register_bundle_folders()
        assert f"its keyframe file is listed as {KEYFRAME}, a name {bundle / 'temporal_layers' / KEYFRAME} already has, which wins" in caplog.text
        assert f"name a bundle's temporal files after the bundle (e.g. vldm-test-copy-{KEYFRAME})" in caplog.text
    finally:
        remove_bundles(comfy, [copy])


def test_model_clip_and_vae_compute_what_the_packs_modules_compute(comfy, loader, bundle):
    import comfy.model_base as model_base
    import nodes as core

    model, clip, vae = loader.load_image_bundle(str(bundle), NAME)
    unet, _ = own(comfy, bundle, "unet.safetensors", "unet")
    text_encoder, _ = own(comfy, bundle, "text_encoder.safetensors", "text_encoder")
    autoencoder, ae_meta = own(comfy, bundle, "autoencoder.safetensors", "autoencoder")
    scale = float(ae_meta["latent_scale"])
    assert isinstance(model.model, model_base.BaseModel) and model.model.model_type == model_base.ModelType.EPS
    assert model.model.latent_format.scale_factor == scale

    # UNet: same output, same temporal-layer sites (so the bundle's layer files fit it)
    g = torch.Generator().manual_seed(0)
    x, t, context = torch.randn(3, 4, 8, 8, generator=g), torch.tensor([3.0, 500.0, 999.0]), torch.randn(3, 16, 24, generator=g)
    layout = comfy.module("vldm_core.unet_layout").find_layout
    with torch.no_grad():
        torch.testing.assert_close(model.model.diffusion_model(x, t, context), unet(x, t, context), rtol=0, atol=1e-5)
    assert layout(model.model.diffusion_model) == layout(unet)
    # ... and SD's linear schedule, as the pipeline's sampler uses it
    sigmas = comfy.module("vldm_core.sampling").discrete_sigmas()
    torch.testing.assert_close(model.model.model_sampling.sigmas.float(), sigmas, rtol=1e-5, atol=0)

    # CLIP through core CLIP Text Encode: exactly the caption encoder; weights as ComfyUI's CLIP weights
    with torch.no_grad():
        for text in (PROMPT, "", "A Red BALL, bouncing!"):
            (cond, _), = core.CLIPTextEncode().encode(clip, text)[0]
            assert torch.equal(cond, text_encoder([text]))
        (weighted, _), = core.CLIPTextEncode().encode(clip, "a (red:1.5) ball")[0]
        plain, empty = text_encoder(["a red ball"]), text_encoder([""])
        expected = plain.clone()
        expected[:, 1] = empty[:, 1] + (plain[:, 1] - empty[:, 1]) * 1.5
        torch.testing.assert_close(weighted, expected, rtol=0, atol=1e-6)

    # VAE: ComfyUI's VAE works on unscaled latents, the MODEL's latent format scales them
    z, pixels = torch.randn(2, 4, 4, 4, generator=g), torch.rand(2, 32, 32, 3, generator=g)
    with torch.no_grad():
        decoded = core.VAEDecode().decode(vae, {"samples": z})[0]
        expected = ((autoencoder.decoder(autoencoder.post_quant_conv(z)) + 1) / 2).clamp(0, 1).movedim(1, -1)
        torch.testing.assert_close(decoded, expected, rtol=0, atol=1e-4)
        encoded = core.VAEEncode().encode(vae, pixels)[0]["samples"]
        mean = autoencoder.encode(pixels.movedim(-1, 1) * 2 - 1)[0]
        torch.testing.assert_close(encoded, mean, rtol=0, atol=1e-5)
        torch.testing.assert_close(model.model.process_latent_in(encoded), mean * scale)


def test_upscaler_is_an_x4_upscaler_computing_what_the_packs_unet_computes(comfy, loader, bundle):
    import comfy.model_base as model_base

    model, clip, vae = loader.load_upscaler_bundle(str(bundle), NAME)
    unet, _ = own(comfy, bundle, "upscaler_unet.safetensors", "unet")
    assert isinstance(model.model, model_base.SD_X4Upscaler) and model.model.model_type == model_base.ModelType.V_PREDICTION
    assert model.model.latent_format.scale_factor == 0.5 and vae.downscale_ratio == vae.upscale_ratio == 4
    g = torch.Generator().manual_seed(1)
    x, t, context, y = torch.randn(2, 7, 8, 8, generator=g), torch.tensor([20.0, 900.0]), torch.randn(2, 16, 24, generator=g), torch.tensor([0, 350])
    layout = comfy.module("vldm_core.unet_layout").find_layout
    with torch.no_grad():
        torch.testing.assert_close(model.model.diffusion_model(x, t, context, y=y), unet(x, t, context, y=y), rtol=0, atol=1e-5)
    assert layout(model.model.diffusion_model) == layout(unet)


def test_keyframes_from_the_bundle_through_every_node(comfy, loader, bundle):
    """Loader -> CLIP Text Encode x2 -> Temporal UNet Patcher -> Keyframe Sampler
    -> Temporal VAE Decode (and VAE Decode), as with an SD checkpoint; the
    decoded frames are the pipeline's decode of the sampled latents."""
    latent_key, temporal_key, plain_key = key("latent"), key("temporal"), key("plain")
    prompt = {
        "1": {"class_type": "VLDM_BundleLoader", "inputs": {"bundle": NAME}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": PROMPT}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
        "4": {"class_type": "VLDM_TemporalUNetPatcher", "inputs": {"model": ["1", 0], "temporal_layers": KEYFRAME}},
        "5": {"class_type": "VLDM_KeyframeSampler", "inputs": {
            "model": ["4", 0], "positive": ["2", 0], "negative": ["3", 0], "frames": 4, "width": 32, "height": 32, "frame_rate": 2.0,
            "seed": 1, "steps": 2, "cfg": 4.0, "sampler_name": "euler", "scheduler": "normal"}},
        "6": {"class_type": "VLDMTest_CaptureLatent", "inputs": {"samples": ["5", 0], "key": latent_key}},
        "7": {"class_type": "VLDM_TemporalVAEDecode", "inputs": {
            "vae": ["1", 2], "samples": ["5", 0], "temporal_decoder": DECODER, "window_frames": 3, "window_overlap": 1, "tile_size": 0, "tile_overlap": 64, "frame_rate": 8.0}},
        "8": {"class_type": "VLDMTest_CaptureImage", "inputs": {"images": ["7", 0], "key": temporal_key}},
        "9": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "10": {"class_type": "VLDMTest_CaptureImage", "inputs": {"images": ["9", 0], "key": plain_key}},
    }
    result = comfy.run(prompt)
    assert result.ok, result.messages
    latents = comfy.captured[latent_key]
    assert latents.shape == (4, 4, 4, 4) and torch.isfinite(latents).all()
    assert IMAGES[temporal_key].shape == IMAGES[plain_key].shape == (4, 32, 32, 3)

    pipeline = comfy.module("vldm_core.pipeline")
    own_model = pipeline.load_bundle(str(bundle))
    scaled = latents * own_model.autoencoder.scale  # the MODEL's latent space, where the pipeline decodes
    decode_video = comfy.module("vldm_core.temporal_decoder").decode_video
    with torch.no_grad():
        plain = own_model.autoencoder.decode(scaled)
        # windows of 3 with 1 shared, as the node was set, each clamped before blending (as the node and pipeline.decode do)
        temporal = decode_video(lambda z: own_model.autoencoder.decode(z, own_model.temporal_decoder, z.shape[0]).clamp(-1, 1), scaled, 3, 1)
    torch.testing.assert_close(IMAGES[plain_key], ((plain + 1) / 2).clamp(0, 1).movedim(1, -1), rtol=0, atol=1e-4)
    torch.testing.assert_close(IMAGES[temporal_key], ((temporal + 1) / 2).clamp(0, 1).movedim(1, -1), rtol=0, atol=1e-4)
    assert (IMAGES[temporal_key] - IMAGES[plain_key]).abs().max() > 1e-3  # the temporal decoder acted


def test_bundle_upscaler_through_the_video_upscaler_and_vae_decode(comfy, loader, bundle):
    out = key("upscaled")
    prompt = {
        "1": {"class_type": "VLDM_BundleUpscalerLoader", "inputs": {"bundle": NAME}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": PROMPT}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
        "4": {"class_type": "VLDM_TemporalUNetPatcher", "inputs": {"model": ["1", 0], "temporal_layers": UPSCALER_LAYERS}},
        "5": {"class_type": "VLDMTest_Image", "inputs": {"shape": "3,16,16,3", "seed": 3, "vary_frame": -1}},
        "6": {"class_type": "VLDM_VideoUpscaler", "inputs": {
            "model": ["4", 0], "positive": ["2", 0], "negative": ["3", 0], "images": ["5", 0], "noise_augmentation": 0.2, "tile_size": 16,
            "tile_overlap": 0, "window_frames": 0, "window_overlap": 1, "seed": 2, "steps": 2, "cfg": 4.0, "sampler_name": "euler", "scheduler": "normal"}},
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}},
        "8": {"class_type": "VLDMTest_CaptureImage", "inputs": {"images": ["7", 0], "key": out}},
    }
    result = comfy.run(prompt)
    assert result.ok, result.messages
    assert not [m for m in result.events("executed") if "text" in (m.get("output") or {})]  # no "frame by frame" note: the layers ran
    assert IMAGES[out].shape == (3, 64, 64, 3) and torch.isfinite(IMAGES[out]).all()


def broken_copy(bundle, tmp_path):
    folder = tmp_path / "broken"
    shutil.copytree(bundle, folder)
    return folder


def test_broken_bundles_are_refused_naming_the_fix(comfy, loader, bundle, tmp_path):
    folder = broken_copy(bundle, tmp_path)
    (folder / "bundle.json").unlink()
    with pytest.raises(FileNotFoundError, match="has no bundle.json.*copy the whole bundle folder again"):
        loader.load_image_bundle(str(folder), "broken")

    folder = broken_copy(bundle, tmp_path / "missing")
    (folder / "autoencoder.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="missing autoencoder.safetensors, which its bundle.json names as its autoencoder: copy the whole bundle"):
        loader.load_image_bundle(str(folder), "broken")

    folder = broken_copy(bundle, tmp_path / "foreign")
    shutil.copy(folder / "temporal_layers" / KEYFRAME, folder / "unet.safetensors")  # a temporal-layer file where the UNet belongs
    with pytest.raises(ValueError, match="its unet file unet.safetensors is not the pack's unet model file.*restore the bundle's own file"):
        loader.load_image_bundle(str(folder), "broken")
    shutil.copy(bundle / "autoencoder.safetensors", folder / "unet.safetensors")  # a model file of another kind
    with pytest.raises(ValueError, match="kind 'autoencoder'; this needs kind 'unet'"):
        loader.load_image_bundle(str(folder), "broken")

    folder = broken_copy(bundle, tmp_path / "outside")
    files = json.loads((folder / "bundle.json").read_text())
    files["files"]["unet"] = "../elsewhere/unet.ckpt"
    (folder / "bundle.json").write_text(json.dumps(files))
    with pytest.raises(ValueError, match="outside the bundle folder"):
        loader.load_image_bundle(str(folder), "broken")

    no_upscaler = bundle.parent / NO_UPSCALER
    with pytest.raises(ValueError, match="has no upscaler.*Load Video LDM Bundle"):
        loader.load_upscaler_bundle(str(no_upscaler), NO_UPSCALER)


def test_an_autoencoder_comfyui_cannot_hold_is_refused(comfy, loader, bundle, tmp_path):
    autoencoder = comfy.module("vldm_core.autoencoder")
    folder = broken_copy(bundle, tmp_path)
    ae = autoencoder.AutoencoderKL(autoencoder.AutoencoderConfig(ch=16, ch_mult=(1, 1, 2, 2), norm_groups=8))
    comfy.module("vldm_core.model_files").save_model(ae, folder / "autoencoder.safetensors", overwrite=True, latent_scale=0.5)
    with pytest.raises(ValueError, match="normalises with 8 groups, ComfyUI's VAE with 32: train or export the autoencoder with norm_groups = 32"):
        loader.load_image_bundle(str(folder), "broken")


def test_an_unknown_bundle_name_is_refused(comfy, loader, bundle):
    with pytest.raises(FileNotFoundError, match="no Video LDM bundle 'not-there'.*models/video_ldm"):
        loader.find_bundle("not-there")
