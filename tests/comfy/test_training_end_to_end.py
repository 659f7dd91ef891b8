"""Train keyframe temporal layers on ComfyUI's own UNet, export them, load the
file with the Temporal UNet Patcher and sample: the whole path a user takes."""

import os

import torch
from torch.utils.data import Dataset

from prompt_parts import key

FRAMES, SIZE = 5, 4
TRAINED = "vldm_test_trained_end_to_end.safetensors"


class MovingPatterns(Dataset):
    """Latent videos (as the UNet sees them) of one pattern shifting a pixel per frame."""

    def __init__(self, first_seed=0):
        self.first_seed = first_seed

    def __len__(self):
        return 12

    def __getitem__(self, index):
        pattern = torch.randn(4, SIZE, SIZE, generator=torch.Generator().manual_seed(self.first_seed + index))
        return {"latents": torch.stack([pattern.roll(k, dims=-1) for k in range(FRAMES)]), "caption": "a moving pattern"}


def held_out_loss(job):
    data = MovingPatterns(first_seed=100)  # videos the training never sees
    batch = {"latents": torch.stack([data[i]["latents"] for i in range(8)]), "caption": ["x"] * 8}
    with torch.no_grad():
        return job.loss(batch, torch.Generator().manual_seed(5)).item()


def test_layers_trained_on_comfyuis_unet_load_in_the_patcher_and_sample(comfy, tmp_path):
    bridge = comfy.module("nodes.comfy_bridge")
    temporal, unet_layout = comfy.module("vldm_core.temporal"), comfy.module("vldm_core.unet_layout")
    jobs, loop, weights = comfy.module("vldm_core.train.jobs"), comfy.module("vldm_core.train.loop"), comfy.module("vldm_core.weights")

    unet = bridge.unet_of(comfy.tiny_model(seed=0))
    positive, _ = comfy.tiny_conds()
    torch.manual_seed(0)
    layers = temporal.TemporalLayers(unet_layout.find_layout(unet))
    job = jobs.TemporalLayersJob(unet, layers, lambda captions: positive[0][0].expand(len(captions), -1, -1), call_unet=comfy.module("vldm_core.comfy_unet").call_unet)
    before = held_out_loss(job)
    loop.train(job, MovingPatterns(), loop.TrainConfig(output_dir=str(tmp_path), steps=100, batch_size=4, lr=3e-3, checkpoint_every=100, log_every=50))
    after = held_out_loss(job)
    assert after < 0.97 * before  # deterministic draws: a small, real gain on a random tiny UNet
    unet_layout.eject(unet)
    path = os.path.join(comfy.temporal_layers_dir, TRAINED)
    weights.save_temporal_layers(layers, path, train_frames=FRAMES, modes=("keyframe",), prediction_type="eps", overwrite=True)

    def sample(layer_file):
        capture = key()
        result = comfy.run({
            "1": {"class_type": "VLDMTest_TinyModel", "inputs": {"seed": 0, "context_dim": 768}},
            "2": {"class_type": "VLDM_TemporalUNetPatcher", "inputs": {"model": ["1", 0], "temporal_layers": layer_file}},
            "3": {"class_type": "VLDM_KeyframeSampler", "inputs": {
                "model": ["2", 0], "positive": ["1", 1], "negative": ["1", 2], "frames": FRAMES, "width": 8 * SIZE, "height": 8 * SIZE,
                "frame_rate": 8.0, "seed": 3, "steps": 3, "cfg": 3.0, "sampler_name": "euler", "scheduler": "normal",
            }},
            "4": {"class_type": "VLDMTest_CaptureLatent", "inputs": {"samples": ["3", 0], "key": capture}},
        })
        assert result.ok, result.messages
        return comfy.captured[capture]

    trained, fresh = sample(TRAINED), sample(bridge.FRESH)
    assert trained.shape == (FRAMES, 4, SIZE, SIZE) and torch.isfinite(trained).all()
    assert (trained - fresh).abs().max() > 1e-3  # the trained layers act inside ComfyUI's sampler
