"""Temporal VAE Decode in a real ComfyUI: identity with VAE Decode at init,
windows independent of free memory, SVD's decoder, tiles, VIDEO frame rate, errors."""

import os
import sys

import pytest
import torch

from prompt_parts import key

DDCONFIG = {"double_z": True, "z_channels": 4, "resolution": 32, "in_channels": 3, "out_ch": 3, "ch": 32, "ch_mult": [1, 2, 2, 4], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}
FRESH, TRAINED, WIDER, KEYFRAME = "vldm_test_fresh_dec.safetensors", "vldm_test_dec.safetensors", "vldm_test_dec_ch64.safetensors", "vldm_test_keyframe_dec.safetensors"
IMAGES, VIDEOS = {}, {}


def tiny_vae(harness, kind="sd", seed=0, ch=32):
    """A ComfyUI VAE holding the pack's tiny CompVis-layout autoencoder, or an SVD-style one."""
    import comfy.model_patcher
    import comfy.sd
    from comfy.ldm.models.autoencoder import AutoencodingEngine

    autoencoder = harness.module("vldm_core.autoencoder")
    torch.manual_seed(seed)
    ae = autoencoder.AutoencoderKL(autoencoder.AutoencoderConfig(ch=ch))
    ddconfig = dict(DDCONFIG, ch=ch)
    vae = comfy.sd.VAE(sd=ae.state_dict(), config={"params": {"ddconfig": ddconfig, "embed_dim": 4}}, dtype=torch.float32)
    if kind == "svd":
        engine = AutoencodingEngine(
            regularizer_config={"target": "comfy.ldm.models.autoencoder.DiagonalGaussianRegularizer"},
            encoder_config={"target": "comfy.ldm.modules.diffusionmodules.model.Encoder", "params": ddconfig},
            decoder_config={"target": "comfy.ldm.modules.temporal_ae.VideoDecoder", "params": dict(ddconfig, video_kernel_size=[3, 1, 1], alpha=0.0)},
        )
        # ComfyUI's ops leave weights uninitialised: the image layers come from the
        # tiny autoencoder, the temporal ones are drawn as if trained
        missing = set(engine.load_state_dict(ae.state_dict(), strict=False).missing_keys)
        with torch.no_grad():
            for name, p in engine.named_parameters():
                if name in missing:
                    p.copy_(torch.ones_like(p) if "norm" in name and name.endswith("weight") else torch.randn_like(p) * 0.05)
        vae.first_stage_model = engine.eval()
        vae.patcher = comfy.model_patcher.ModelPatcher(engine, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))
    return vae


class TinyVAE:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"kind": (["sd", "svd"],), "seed": ("INT", {"default": 0})}}

    RETURN_TYPES = ("VAE",)
    FUNCTION = "load"
    CATEGORY = "testing"
    comfy = None

    def load(self, kind, seed):
        return (tiny_vae(TinyVAE.comfy, kind, seed),)


class RandomLatent:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"frames": ("INT", {"default": 6}), "size": ("INT", {"default": 4}), "seed": ("INT", {"default": 0}), "frame_rate": ("FLOAT", {"default": 0.0})}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "make"
    CATEGORY = "testing"

    def make(self, frames, size, seed, frame_rate):
        latent = {"samples": torch.randn(frames, 4, size, size, generator=torch.Generator().manual_seed(seed))}
        if frame_rate:
            latent["frame_rate"] = frame_rate
        return (latent,)


class CaptureImage:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",), "key": ("STRING", {"default": "out"})}, "optional": {"video": ("VIDEO",)}}

    RETURN_TYPES = ()
    FUNCTION = "capture"
    OUTPUT_NODE = True
    CATEGORY = "testing"

    def capture(self, images, key, video=None):
        IMAGES[key] = images.clone()
        if video is not None:
            VIDEOS[key] = video.get_components()
        return {}


@pytest.fixture(scope="module")
def files(comfy):
    TinyVAE.comfy = comfy
    comfy.add_nodes({"VLDMTest_TinyVAE": TinyVAE, "VLDMTest_RandomLatent": RandomLatent, "VLDMTest_CaptureImage": CaptureImage})
    temporal_decoder = comfy.module("vldm_core.temporal_decoder")
    save = comfy.module("vldm_core.weights").save_temporal_layers
    folder = comfy.folder_paths.get_folder_paths("temporal_decoders")[0]
    for name, ch, std, modes in ((FRESH, 32, 0.0, ("decoder",)), (TRAINED, 32, 0.1, ("decoder",)), (WIDER, 64, 0.0, ("decoder",)), (KEYFRAME, 32, 0.0, ("keyframe",))):
        layers = temporal_decoder.fresh_temporal_decoder(tiny_vae(comfy, ch=ch).first_stage_model.decoder)
        with torch.no_grad():
            for p in layers.parameters():
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(3)) * std)
        save(layers, os.path.join(folder, name), train_frames=8, modes=modes, overwrite=True)


def decode_prompt(key, decoder, frames=6, size=4, window=16, overlap=4, tile=0, tile_overlap=64, kind="sd", frame_rate=0.0, vae_decode=None):
    prompt = {
        "1": {"class_type": "VLDMTest_TinyVAE", "inputs": {"kind": kind, "seed": 0}},
        "2": {"class_type": "VLDMTest_RandomLatent", "inputs": {"frames": frames, "size": size, "seed": 1, "frame_rate": frame_rate}},
        "3": {"class_type": "VLDM_TemporalVAEDecode", "inputs": {
            "vae": ["1", 0], "samples": ["2", 0], "temporal_decoder": decoder, "window_frames": window, "window_overlap": overlap,
            "tile_size": tile, "tile_overlap": tile_overlap, "frame_rate": 8.0,
        }},
        "4": {"class_type": "VLDMTest_CaptureImage", "inputs": {"images": ["3", 0], "video": ["3", 1], "key": key}},
    }
    if vae_decode:
        prompt["5"] = {"class_type": "VAEDecode", "inputs": {"vae": ["1", 0], "samples": ["2", 0]}}
        prompt["6"] = {"class_type": "VLDMTest_CaptureImage", "inputs": {"images": ["5", 0], "key": vae_decode}}
    return prompt


def run(comfy, prompt):
    result = comfy.run(prompt)
    assert result.ok, result.messages
    return result


def test_untrained_temporal_decoder_decodes_exactly_as_vae_decode(comfy, files):
    ours, windowed, core = key(), key(), key()
    run(comfy, decode_prompt(ours, FRESH, frames=6, vae_decode=core))
    assert IMAGES[ours].shape == (6, 32, 32, 3)
    assert torch.equal(IMAGES[ours], IMAGES[core])
    result = run(comfy, decode_prompt(windowed, FRESH, frames=6, window=4, overlap=2))
    assert torch.allclose(IMAGES[windowed], IMAGES[core], atol=1e-6)  # blending agreeing windows rounds, no more
    assert [p["value"] for p in result.events("progress") if p["node"] == "3"] == [1, 2]  # windows [0, 4) and [2, 6)


def test_trained_decoder_couples_frames_and_the_video_keeps_the_frame_rate(comfy, files):
    ours, core = key(), key()
    run(comfy, decode_prompt(ours, TRAINED, frames=6, frame_rate=10.0, vae_decode=core))
    assert (IMAGES[ours] - IMAGES[core]).abs().max() > 1e-3
    assert VIDEOS[ours].frame_rate == 10 and torch.equal(VIDEOS[ours].images, IMAGES[ours])
    fallback = key()
    run(comfy, decode_prompt(fallback, FRESH, frames=3))
    assert VIDEOS[fallback].frame_rate == 8


def test_window_positions_do_not_depend_on_free_memory(comfy, files, monkeypatch):
    mm = sys.modules["comfy.model_management"]

    node = comfy.module("nodes.temporal_vae_decode").TemporalVAEDecode
    latents = {"samples": torch.randn(10, 4, 4, 4, generator=torch.Generator().manual_seed(2))}
    outputs = []
    for kind in ("sd", "svd"):
        vae = tiny_vae(comfy, kind)
        decoder = TRAINED if kind == "sd" else "none (the VAE's own decoder)"
        for free in (2**20, 2**40):
            monkeypatch.setattr(mm, "get_free_memory", lambda *a, free=free, **k: free)
            outputs.append(node.execute(vae, latents, decoder, 4, 2, 0, 64, 8.0).args[0])
            if kind == "svd":
                outputs.append(vae.decode(latents["samples"]))  # ComfyUI's own: batches as memory allows
    assert torch.equal(outputs[0], outputs[1]) and torch.equal(outputs[2], outputs[4])
    assert (outputs[3] - outputs[5]).abs().max() > 1e-3  # the contrast: SVD through VAE Decode depends on free memory


def test_svd_decoder_decodes_each_window_as_one_video(comfy, files):
    node = comfy.module("nodes.temporal_vae_decode").TemporalVAEDecode
    vae = tiny_vae(comfy, "svd")
    latents = torch.randn(6, 4, 4, 4, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        whole = vae.process_output(vae.first_stage_model.decode(latents).float()).movedim(1, -1)
        frame_by_frame = torch.cat([vae.process_output(vae.first_stage_model.decode(f[None]).float()) for f in latents]).movedim(1, -1)
    ours = node.execute(vae, {"samples": latents}, "none (the VAE's own decoder)", 8, 2, 0, 64, 8.0).args[0]
    assert torch.allclose(ours, whole, atol=1e-6)
    assert (whole - frame_by_frame).abs().max() > 1e-3  # its temporal blocks act


def test_tiles_covering_the_frame_change_nothing_and_overlaps_bound_the_seams(comfy, files):
    whole, covering, blended, butted = key(), key(), key(), key()
    run(comfy, decode_prompt(whole, TRAINED, frames=2, size=16))
    run(comfy, decode_prompt(covering, TRAINED, frames=2, size=16, tile=128))
    run(comfy, decode_prompt(blended, TRAINED, frames=2, size=16, tile=64, tile_overlap=32))
    run(comfy, decode_prompt(butted, TRAINED, frames=2, size=16, tile=64, tile_overlap=0))
    assert torch.equal(IMAGES[covering], IMAGES[whole])
    assert (IMAGES[blended] - IMAGES[whole]).abs().mean() < (IMAGES[butted] - IMAGES[whole]).abs().mean()


ERRORS = {
    "a file for another VAE": (dict(decoder=WIDER), ["built for KL-f8 decoder (ch 64", "this VAE is KL-f8 decoder (ch 32"]),
    "UNet layers in the decoder folder": (dict(decoder=KEYFRAME), ["for keyframe, not a temporal decoder"]),
    "a file with SVD's VAE": (dict(decoder=FRESH, kind="svd"), ["Stable Video Diffusion's", "none (the VAE's own decoder)"]),
    "an overlap as long as the window": (dict(decoder=FRESH, window=4, overlap=4), ["window_overlap 4 must be smaller than window_frames 4"]),
    "tiles that are not a multiple of 64": (dict(decoder=FRESH, tile=96, tile_overlap=32), ["tile_size 96", "multiple of 64"]),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_bad_input_is_refused_with_the_fix(comfy, files, case):
    changes, phrases = ERRORS[case]
    result = comfy.run(decode_prompt(key(), **changes))
    assert not result.ok
    assert result.error["node_type"] == "VLDM_TemporalVAEDecode"
    for phrase in phrases:
        assert phrase in result.error["exception_message"]


def test_a_video_vae_is_refused(comfy, files):
    node = comfy.module("nodes.temporal_vae_decode").TemporalVAEDecode
    vae = tiny_vae(comfy)
    vae.latent_dim = 3  # as Wan's or Hunyuan's video VAE
    with pytest.raises(ValueError, match="video VAE .*decode its latents with VAE Decode"):
        node.execute(vae, {"samples": torch.zeros(2, 4, 4, 4)}, "none (the VAE's own decoder)", 4, 1, 0, 64, 8.0)
