"""A toy training job and dataset for the training-loop tests, and the machinery
that trains any job under two gloo ranks and checks it against one process.
Run as a script, this is one rank of such a run (``train_with_two_ranks``
starts two, with torchrun's variables):

    python train_toys.py CASE_FILE CASE_FUNCTION OUTPUT_DIR

where ``CASE_FUNCTION`` of the module at ``CASE_FILE`` returns (job, data, the
TrainConfig settings but output_dir).
"""

import importlib.util
import inspect
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.checkpoint import checkpoint
from torch.utils.data import Dataset

from vldm_core.train.loop import TrainConfig, train

REPO = Path(__file__).resolve().parents[2]


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


class TwoScalesJob:
    """Two heads whose gradients are about a thousand times apart, in two
    parameter groups, returning each head's loss as a term to log; records the
    batches it sees and what it returns."""

    def __init__(self):
        torch.manual_seed(0)
        self.module = nn.ModuleDict({"small": nn.Linear(4, 1), "large": nn.Linear(4, 1)})
        self.batches, self.outputs = [], []

    def parameter_groups(self):
        return {name: list(head.parameters()) for name, head in self.module.items()}

    def loss(self, batch, generator):
        self.batches.append(batch)
        small, large = (((head(batch["x"]).squeeze(-1) - batch["y"]) ** 2).mean() for head in self.module.values())
        output = {"loss": 10 * small + 10_000 * large, "small": small.detach(), "large": large.detach()}
        self.outputs.append(output)
        return output


def toy_case():
    """The toy job without noise, so that a checkpoint of two ranks resumes in one
    process to the same weights as one of one process (fresh draws change nothing)."""
    settings = dict(steps=4, batch_size=4, lr=0.01, ema_decay=0.5, checkpoint_every=2, log_every=1)
    return ToyJob(noise=0.0), ToyData(), settings


class Indexed(Dataset):
    """A dataset whose samples carry their index, for DrawsPerSample."""

    def __init__(self, data):
        self.data = data

    def __len__(self):
        return len(self.data)

    def set_epoch(self, epoch):
        if hasattr(self.data, "set_epoch"):
            self.data.set_epoch(epoch)

    def __getitem__(self, i):
        return {**self.data[i], "index": i}


class DrawsPerSample:
    """A job whose random draws do not depend on how a batch is split over ranks:
    the wrapped job's loss runs one sample at a time, with a generator seeded by
    the sample's index, and is averaged over the samples (the wrapped loss is a
    mean over samples, so this is that loss with other draws). Two ranks with
    half batches then draw what one process with whole batches draws, and their
    weights can be compared. Records the indices it trains on."""

    def __init__(self, job):
        self.job, self.indices = job, []

    def __getattr__(self, name):  # module, parameter_groups, config_dict...
        return getattr(self.job, name)

    def loss(self, batch, generator):
        indices = batch["index"].tolist()
        self.indices += indices
        outputs = [self.job.loss(sample(batch, i), torch.Generator().manual_seed(index)) for i, index in enumerate(indices)]
        if isinstance(outputs[0], dict):
            return {name: torch.stack([o[name] for o in outputs]).mean() for name in outputs[0]}
        return torch.stack(outputs).mean()


def sample(batch, i):
    """Sample ``i`` of a collated batch, as a batch of one."""
    return {key: value[i : i + 1] for key, value in batch.items()}


def train_case(case, output_dir):
    """Train ``case()``'s job (wrapped in DrawsPerSample) on its data (Indexed) in this process."""
    job, data, settings = case()
    job = DrawsPerSample(job)
    train(job, Indexed(data), TrainConfig(output_dir=str(output_dir), **settings))
    return job, settings


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_with_two_ranks(case, output_dir, timeout=120):
    """Run ``train_case(case)`` as two gloo ranks on the CPU; returns each rank's
    final weights and the indices it trained on."""
    env = {**os.environ, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, __file__, inspect.getfile(case), case.__name__, str(output_dir)]
    ranks = [subprocess.Popen(command, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, stderr=subprocess.PIPE, text=True) for r in range(2)]
    try:
        errors = [p.communicate(timeout=timeout)[1] for p in ranks]
    finally:
        for p in ranks:
            p.kill()
    assert [p.returncode for p in ranks] == [0, 0], errors
    weights = [load_file(str(Path(output_dir) / f"weights.rank{r}.safetensors")) for r in range(2)]
    indices = [json.loads((Path(output_dir) / f"indices.rank{r}.json").read_text()) for r in range(2)]
    return weights, indices


def log_of(output_dir):
    return [json.loads(line) for line in (Path(output_dir) / "log.jsonl").read_text().splitlines()]


def logged_values(line):
    """A log line's loss, gradient norms and terms, by name."""
    return {"loss": line["loss"], "grad_norm": line["grad_norm"], **{f"grad_norms.{k}": v for k, v in line["grad_norms"].items()}, **{f"terms.{k}": v for k, v in line["terms"].items()}}


def assert_two_ranks_match_one_process(case, tmp_path, tolerance=1e-6):
    """Train ``case`` under two gloo ranks (in ``tmp_path/ddp``) and in one process
    with the same global batch (``tmp_path/single``): both ranks must end
    bit-equal, equal to one process within ``tolerance`` (having moved much
    further), each having trained on its half of every global batch, and the
    log's losses, terms and gradient norms (averaged over the ranks) must be one
    process's. Returns the one-process job and its settings.

    Real models need a small lr and a tight ``grad_clip`` here: some of their
    gradient elements are near zero, so rounding, which differs between two
    ranks' sums and one process's, is large beside them, and AdamW, normalising
    each element, turns it into updates of up to lr; the clip brings such
    elements below AdamW's eps, where their updates shrink with them."""
    weights, indices = train_with_two_ranks(case, tmp_path / "ddp")
    single, settings = train_case(case, tmp_path / "single")
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    start = case()[0].module.state_dict()
    trained = single.module.state_dict()
    assert max((v - start[k]).abs().max().item() for k, v in trained.items()) > 10 * tolerance
    for k, v in trained.items():
        torch.testing.assert_close(weights[0][k], v, rtol=0, atol=tolerance)
    share = settings["batch_size"] // 2
    for step in range(settings["steps"]):
        halves = [rank[share * step : share * (step + 1)] for rank in indices]
        assert halves[0] + halves[1] == single.indices[2 * share * step : 2 * share * (step + 1)]
    for ddp, one in zip(log_of(tmp_path / "ddp"), log_of(tmp_path / "single"), strict=True):
        assert logged_values(ddp) == pytest.approx(logged_values(one), rel=1e-5, abs=1e-7)
    return single, settings


def main(case_file, case_function, output_dir):
    spec = importlib.util.spec_from_file_location(Path(case_file).stem, case_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    job, _ = train_case(getattr(module, case_function), output_dir)
    rank = os.environ["RANK"]
    save_file({k: v.contiguous() for k, v in job.module.state_dict().items()}, os.path.join(output_dir, f"weights.rank{rank}.safetensors"))
    with open(os.path.join(output_dir, f"indices.rank{rank}.json"), "w") as f:
        json.dump(job.indices, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
