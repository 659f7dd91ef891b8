"""Training throughput and peak memory of the temporal layers' training loop.

Trains keyframe temporal layers on a frozen small SD-layout UNet (random
weights, random latent videos: the cost does not depend on what is learned)
through the real loop (vldm_core.train.loop.train), at T = 8 and 16 frames,
with and without gradient checkpointing, and reads clips/s and peak memory off
the loop's own log after warm-up. Each setting runs in a fresh process.

    python benchmarks/train_throughput.py [--device cuda --size 32 --channels 128 --batch 8 --precision bf16]
"""

import argparse
import json
import os
import resource
import sys
import tempfile

import torch
from fresh_process import run_setting
from torch.utils.data import Dataset

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from vldm_core.temporal import TemporalLayers  # noqa: E402
from vldm_core.train.jobs import TemporalLayersJob  # noqa: E402
from vldm_core.train.loop import TrainConfig, train  # noqa: E402
from vldm_core.unet import UNetConfig, UNetModel  # noqa: E402
from vldm_core.unet_layout import find_layout  # noqa: E402

SETTINGS = [(8, False), (8, True), (16, False), (16, True)]
CONTEXT_DIM = 64


class RandomVideos(Dataset):
    def __init__(self, frames, size, videos=64):
        self.frames, self.size, self.videos = frames, size, videos

    def __len__(self):
        return self.videos

    def __getitem__(self, index):
        g = torch.Generator().manual_seed(index)
        return {"latents": torch.randn(self.frames, 4, self.size, self.size, generator=g), "caption": "x"}


def run_one(args, frames, checkpointing):
    device = torch.device(args.device)
    torch.manual_seed(0)
    config = UNetConfig(model_channels=args.channels, channel_mult=(1, 2, 4), num_res_blocks=2, attention_levels=(0, 1, 2), head_dim=32, context_dim=CONTEXT_DIM)
    unet = UNetModel(config).to(device)
    layers = TemporalLayers(find_layout(unet)).to(device)
    text = torch.randn(1, 16, CONTEXT_DIM)
    job = TemporalLayersJob(unet, layers, lambda captions: text.expand(len(captions), -1, -1))
    with tempfile.TemporaryDirectory() as output:
        settings = TrainConfig(
            output_dir=output, steps=args.steps, batch_size=args.batch, lr=1e-4, log_every=args.steps // 2, checkpoint_every=10**9,
            precision=args.precision, gradient_checkpointing=checkpointing, seed=0,
        )
        train(job, RandomVideos(frames, args.size), settings)
        with open(os.path.join(output, "log.jsonl")) as f:
            last = [json.loads(line) for line in f][-1]  # the second half: after warm-up
    peak = last["peak_memory_gib"] * 2**30 if last["peak_memory_gib"] is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"clips_per_s": last["clips_per_s"], "peak": peak, "trainable": sum(p.numel() for p in layers.parameters())}))


def measure(args, frames, checkpointing):
    return run_setting(__file__, (frames, int(checkpointing)), args)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=16, help="latent height and width")
    parser.add_argument("--channels", type=int, default=32, help="the UNet's model_channels")
    parser.add_argument("--batch", type=int, default=2, help="videos per step")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--one", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        return run_one(args, args.one[0], bool(args.one[1]))

    memory = "peak CUDA memory" if args.device.startswith("cuda") else "peak resident set"
    print(f"device {args.device}, latents {args.size}x{args.size}, UNet channels {args.channels}, batch {args.batch} videos, {args.precision}")
    print(f"  {'frames':>6} {'checkpointing':>14} {'clips/s':>8} {'frames/s':>9} {memory + ' (MiB)':>26}")
    rows = {setting: measure(args, *setting) for setting in SETTINGS}
    for (frames, checkpointing), r in rows.items():
        print(f"  {frames:>6} {'on' if checkpointing else 'off':>14} {r['clips_per_s']:>8.2f} {r['clips_per_s'] * frames:>9.1f} {r['peak'] / 2**20:>26.1f}")
    print(f"  trainable temporal parameters: {rows[SETTINGS[0]]['trainable'] / 1e6:.1f}M")
    for frames in (8, 16):
        off, on = rows[(frames, False)], rows[(frames, True)]
        print(f"  T={frames}: checkpointing keeps {on['peak'] / off['peak']:.2f} of the memory at {on['clips_per_s'] / off['clips_per_s']:.2f} of the speed")


if __name__ == "__main__":
    main()
