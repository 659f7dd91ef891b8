"""A toy training job and dataset for the training-loop tests; run as a script,
one rank of a distributed run (the test starts two, with torchrun's variables).

    python train_toys.py OUTPUT_DIR STEPS BATCH_SIZE
"""

import json
import os
import sys

import torch
from safetensors.torch import save_file
from torch import nn
from torch.utils.checkpoint import checkpoint
from torch.utils.data import Dataset


class Interrupted(Exception):
    """Stands in for a killed process: raised from inside the data pipeline."""


class ToyData(Dataset):
    """Fixed random samples (dicts of tensors and a caption); records what it serves."""

    def __init__(self, size=10, dim=4, fail_after=None):
        g = torch.Generator().manual_seed(123)
        self.x = torch.randn(size, dim, generator=g)
        self.y = torch.randn(size, generator=g)
        self.fail_after = fail_after  # raise on this many-th fetch
        self.fetched, self.epochs, self.epoch = [], [], None

    def __len__(self):
        return len(self.x)

    def set_epoch(self, epoch):
        self.epochs.append(epoch)
        self.epoch = epoch

    def __getitem__(self, i):
        if self.fail_after is not None and len(self.fetched) == self.fail_after:
            raise Interrupted(f"interrupted at fetch {self.fail_after}")
        self.fetched.append(i)
        return {"x": self.x[i], "y": self.y[i], "caption": f"clip {i}", "epoch": self.epoch}


class ToyJob:
    """A frozen base (outside ``module``) feeding a small trainable head, with
    noise from the loop's generator. ``base_requires_grad`` lets gradients reach
    the base, to show that only ``module`` is ever stepped."""

    def __init__(self, noise=0.1, base_requires_grad=False, settings=None, device="cpu"):
        torch.manual_seed(0)
        self.base = nn.Linear(4, 8).requires_grad_(base_requires_grad).to(device)
        self.module = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 1)).to(device)
        self.noise = noise
        self.settings = {"width": 8} if settings is None else settings
        self.checkpointing = None
        self.calls, self.dtypes = 0, []

    def config_dict(self):
        return self.settings

    def set_gradient_checkpointing(self, enabled):
        self.checkpointing = enabled

    def loss(self, batch, generator):
        self.calls += 1
        h = self.base(batch["x"])
        h = h + self.noise * torch.randn(h.shape, generator=generator).to(h)
        out = checkpoint(self.module, h, use_reentrant=False) if self.checkpointing else self.module(h)
        self.dtypes.append(out.dtype)
        return ((out.float().squeeze(-1) - batch["y"]) ** 2).mean()


class PlainJob:
    """The protocol's required members only."""

    def __init__(self):
        torch.manual_seed(0)
        self.module = nn.Linear(4, 1)
        self.calls = 0

    def loss(self, batch, generator):
        self.calls += 1
        return ((self.module(batch["x"]).squeeze(-1) - batch["y"]) ** 2).mean()


def main(output_dir, steps, batch_size):
    from vldm_core.train.loop import TrainConfig, train

    data = ToyData()
    job = ToyJob(noise=0.0)
    config = TrainConfig(output_dir=output_dir, steps=int(steps), batch_size=int(batch_size), lr=0.01, ema_decay=0.5, checkpoint_every=2, log_every=1)
    train(job, data, config)
    rank = os.environ["RANK"]
    save_file({k: v.contiguous() for k, v in job.module.state_dict().items()}, os.path.join(output_dir, f"weights.rank{rank}.safetensors"))
    with open(os.path.join(output_dir, f"fetched.rank{rank}.json"), "w") as f:
        json.dump(data.fetched, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
