"""The pack's own model files and its small caption encoder."""

import pytest
import torch

from vldm_core.autoencoder import AutoencoderConfig, AutoencoderKL
from vldm_core.model_files import load_model, save_model
from vldm_core.text_encoder import TextEncoder, TextEncoderConfig, word_ids
from vldm_core.weights import WeightFileError


def test_a_model_file_rebuilds_its_model_with_its_config(tmp_path):
    torch.manual_seed(0)
    ae = AutoencoderKL(AutoencoderConfig(ch=64, ch_mult=(1, 2, 2, 2)))
    save_model(ae, tmp_path / "ae.safetensors", latent_scale=0.3)
    loaded, metadata = load_model(tmp_path / "ae.safetensors", "autoencoder")
    assert loaded.config == ae.config and metadata["latent_scale"] == "0.3"
    z = torch.randn(1, 4, 2, 2)
    with torch.no_grad():
        assert torch.equal(loaded.decode(z), ae.eval().decode(z))
    with pytest.raises(FileExistsError):
        save_model(ae, tmp_path / "ae.safetensors")
    with pytest.raises(WeightFileError, match="of kind 'autoencoder'; this needs kind 'unet'"):
        load_model(tmp_path / "ae.safetensors", "unet")
    (tmp_path / "junk.safetensors").write_bytes(b"not a model")
    with pytest.raises(WeightFileError, match="not a readable safetensors file"):
        load_model(tmp_path / "junk.safetensors", "unet")


def test_captions_are_hashed_words_and_encode_per_token():
    config = TextEncoderConfig(dim=16, layers=1, heads=2, max_tokens=6)
    assert word_ids("A red Circle!", config) == word_ids("a red circle", config)
    assert word_ids("a red circle", config)[3:] == [0, 0, 0]
    torch.manual_seed(0)
    encoder = TextEncoder(config).eval()
    with torch.no_grad():
        out = encoder(["a red circle", "a blue square", ""])
    assert out.shape == (3, 6, 16) and torch.isfinite(out).all()
    assert (out[0] - out[1]).abs().max() > 1e-3
