"""The temporal decoder: identity at initialisation, frames coupled only within a
video once trained, windowed and tiled decoding, weight files, refusals."""

import pytest
import torch
from torch import nn

from vldm_core.autoencoder import AutoencoderConfig, AutoencoderKL
from vldm_core.temporal_decoder import decode_frames, decode_video, find_decoder_layout, fresh_temporal_decoder
from vldm_core.weights import WeightFileError, load_temporal_layers, save_temporal_layers

from tiny_models import perturb


def autoencoder(seed=0, **config):
    torch.manual_seed(seed)
    return AutoencoderKL(AutoencoderConfig(**config)).eval()


def latents(frames=6, size=4, seed=1):
    return torch.randn(frames, 4, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def vae():
    return autoencoder()


@pytest.fixture(scope="module")
def trained(vae):
    return perturb(fresh_temporal_decoder(vae.decoder), std=0.1).eval()


def decode(vae, z, temporal=None, frames=None):
    with torch.no_grad():
        return decode_frames(vae.decoder, vae.post_quant_conv(z), temporal, frames)


def test_autoencoder_is_f8_with_four_latent_channels(vae):
    image = torch.rand(2, 3, 32, 48) * 2 - 1
    with torch.no_grad():
        mean, logvar = vae.encode(image)
        assert mean.shape == logvar.shape == (2, 4, 4, 6)
        assert vae.decode(mean).shape == image.shape


def test_layout_has_a_site_after_every_decoder_resnet_block(vae):
    layout = find_decoder_layout(vae.decoder)
    assert layout.family == "KL-f8 decoder (ch 32, ch_mult [1, 2, 2, 4])"
    assert [s.path for s in layout.sites][:4] == ["mid.block_1", "mid.block_2", "up.3.block.0", "up.3.block.1"]
    assert len(layout.sites) == 2 + 4 * 2 and all(s.kind == "res" and s.emb_channels == 0 for s in layout.sites)


def test_untrained_temporal_decoder_is_the_image_decoder_to_the_bit(vae):
    z = latents()
    fresh = fresh_temporal_decoder(vae.decoder)
    assert all(not hasattr(layer, "emb_proj") for layer in fresh.layers.values())
    with torch.no_grad():
        assert torch.equal(decode(vae, z, fresh, frames=6), vae.decode(z))


def test_trained_temporal_decoder_couples_frames_within_a_video_only(vae, trained):
    z = latents(frames=8)
    changed = z.clone()
    changed[0] += 1.0
    out, out_changed = decode(vae, z, trained, frames=4), decode(vae, changed, trained, frames=4)
    assert (out_changed[1] - out[1]).abs().max() > 1e-3  # the next frame of the same video sees it
    assert torch.equal(out_changed[4:], out[4:])  # the second video does not
    image, image_changed = decode(vae, z), decode(vae, changed)
    assert torch.equal(image_changed[1:], image[1:])  # the image decoder never couples frames


def test_encoder_is_never_touched(vae, trained):
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    decode(vae, latents(), trained, frames=6)
    assert all(torch.equal(v, before[k]) for k, v in vae.state_dict().items())
    assert all(n.startswith("layers.") for n, _ in trained.named_parameters())


def test_one_window_covering_the_video_equals_decoding_it_whole(vae, trained):
    z = latents(frames=7)
    whole = decode(vae, z, trained, frames=7)
    windowed = decode_video(lambda w: decode(vae, w, trained, frames=w.shape[0]), z, window=8, overlap=2)
    assert torch.equal(windowed, whole)


def test_windows_of_a_frame_wise_decoder_add_nothing(vae):
    z = latents(frames=11)
    windowed = decode_video(lambda w: decode(vae, w), z, window=4, overlap=2)
    assert torch.allclose(windowed, decode(vae, z), atol=1e-5)


def test_overlapping_windows_keep_temporal_seams_small(vae, trained):
    """Windows see fewer neighbours than the whole video; blending their overlaps
    keeps the result closer to the whole-video decode than butt-joined windows."""
    z = latents(frames=16)
    whole = decode(vae, z, trained, frames=16)

    def error(overlap):
        return (decode_video(lambda w: decode(vae, w, trained, frames=w.shape[0]), z, window=6, overlap=overlap) - whole).abs().mean()

    assert error(3) < error(0)


def test_tiles_covering_the_frame_equal_untiled_and_overlap_bounds_seams(vae):
    z = latents(frames=2, size=12)
    whole = decode(vae, z)
    tiled = lambda size, overlap: decode_video(lambda w: decode(vae, w), z, window=8, overlap=0, tile=size, tile_overlap=overlap)  # noqa: E731
    assert torch.equal(tiled(12, 2), whole)
    assert (tiled(6, 3) - whole).abs().max() < (tiled(6, 0) - whole).abs().max()


def test_tiles_of_an_f4_decoder_are_placed_at_four_pixels_per_latent():
    f4 = autoencoder(ch_mult=(1, 2, 2))
    z = latents(frames=2, size=12)
    whole = decode(f4, z)
    assert whole.shape[-1] == 4 * 12 and f4.config.downsampling == 4
    tiled = lambda size, overlap: decode_video(lambda w: decode(f4, w), z, window=8, overlap=0, tile=size, tile_overlap=overlap, upscale=4)  # noqa: E731
    assert torch.equal(tiled(12, 2), whole)
    assert (tiled(6, 3) - whole).abs().max() < (tiled(6, 0) - whole).abs().max()


def test_weight_file_round_trip_and_refusal_for_another_vae(vae, trained, tmp_path):
    path = tmp_path / "decoder.safetensors"
    save_temporal_layers(trained, path, train_frames=8, modes=("decoder",))
    loaded = load_temporal_layers(path, find_decoder_layout(vae.decoder), target="VAE")
    assert loaded.modes == ("decoder",)
    z = latents()
    assert torch.equal(decode(vae, z, loaded.eval(), frames=6), decode(vae, z, trained, frames=6))
    wider = autoencoder(ch=64)
    with pytest.raises(WeightFileError, match=r"built for KL-f8 decoder \(ch 32.*this VAE is KL-f8 decoder \(ch 64"):
        load_temporal_layers(path, find_decoder_layout(wider.decoder), target="VAE")


def test_other_autoencoders_are_refused_and_an_f4_decoder_is_its_own_family(vae):
    with pytest.raises(ValueError, match="16 latent channels; the temporal decoder needs a 4-channel KL VAE"):
        find_decoder_layout(autoencoder(z_channels=16).decoder)
    f4 = find_decoder_layout(autoencoder(ch_mult=(1, 2, 4)).decoder)
    assert f4.family == "KL-f4 decoder (ch 32, ch_mult [1, 2, 4])" and f4.family != find_decoder_layout(vae.decoder).family


def test_video_and_foreign_decoders_are_refused(vae):
    svd_like = autoencoder().decoder
    svd_like.mid.block_1.time_stack = nn.Identity()
    with pytest.raises(ValueError, match="already a video decoder"):
        find_decoder_layout(svd_like)
    with pytest.raises(ValueError, match="not a Stable Diffusion KL autoencoder"):
        find_decoder_layout(nn.Sequential(nn.Conv2d(4, 3, 1)))
