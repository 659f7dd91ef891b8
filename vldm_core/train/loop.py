"""The training loop every Video LDM job shares: AdamW on the job's trainable
module only, optional bf16 autocast, gradient checkpointing, an EMA of the
trainable weights, checkpoints with exact resume, and DistributedDataParallel
under ``torchrun``.

A job (see ``TrainJob``) owns its models and its loss; the loop owns the
optimizer, the data order, the random stream the loss draws from, and the
files in ``output_dir``:

- ``checkpoint.safetensors``: everything a resume needs, written atomically by
  rank 0 every ``checkpoint_every`` steps and at the end. It is read with
  safetensors only, never unpickled, so a checkpoint from elsewhere is safe to open.
- ``log.jsonl``: one JSON object per ``log_every`` steps (step, loss, lr,
  grad_norm, grad_norms, terms, clips_per_s, seconds, peak_memory_gib) for
  plotting; losses and norms are means over the window's steps and the ranks.

Resume is exact: the data position, the optimizer state, the EMA and the loss's
random generators are restored, so an interrupted run ends where an
uninterrupted one would (bit for bit on the CPU; on CUDA up to the
nondeterminism of its kernels). A checkpoint also resumes under another number
of processes: data order, weights and optimizer continue exactly, the loss's
random draws start fresh streams.
"""

import hashlib
import json
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import MISSING, asdict, dataclass, fields
from typing import Protocol

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DataLoader, default_collate

from ..file_checks import config_from, open_safetensors

CHECKPOINT = "checkpoint.safetensors"
MAX_COUNT = 1 << 62  # steps, seeds and intervals: anything a run could count to
LOG = "log.jsonl"
FORMAT = "vldm.train_checkpoint"
FORMAT_VERSION = 1
PRECISIONS = ("fp32", "bf16")


class TrainJob(Protocol):
    """What ``train`` needs from a job.

    ``module``: an ``nn.Module`` holding exactly the trainable parameters (every
    one with ``requires_grad``). Only these reach the optimizer, the EMA, DDP
    and the checkpoint; frozen base models live elsewhere in the job. The
    module must already sit on the training device (``default_device()``).

    ``loss(batch, generator)``: a scalar, the mean over the batch's samples of
    the per-sample loss, so that averaging the ranks' gradients (DDP) equals
    one process's gradient over the global batch; or a dict of scalars: the
    one to minimise under ``"loss"``, beside named terms to log (a GAN's
    reconstruction, adversarial and discriminator losses, say), which the loop
    detaches and logs under ``"terms"`` (the same names every step). Only
    ``"loss"`` is backpropagated. ``batch`` is the default
    collate of the dataset's dicts (tensors on the module's device, strings as
    lists). Every random draw comes from ``generator``, a CPU
    ``torch.Generator`` (draw on the CPU, then move: the same stream on any
    device, so resume is exact across machines).

    Why no wrapped module is handed to ``loss``: the loop runs ``loss`` as the
    forward of a module whose parameters are ``module``'s, and under DDP wraps
    that module. DDP syncs gradients only for what runs inside its forward, so
    ``loss`` may use the trainable weights however it likes (injected into a
    frozen UNet, say) as long as it uses them only inside ``loss``. Gradient
    checkpointing inside ``loss`` must be non-reentrant
    (``torch.utils.checkpoint.checkpoint(..., use_reentrant=False)``) to
    work under DDP.

    Optional members:
    ``set_gradient_checkpointing(enabled)``: called once before training;
    without it ``gradient_checkpointing=True`` is refused.
    ``config_dict()``: the job's own settings (JSON-able); a resume with other
    settings is refused, naming them.
    ``find_unused_parameters``: True where some trainable parameters sit out
    some steps (DDP then looks for them each step, at some cost).
    ``parameter_groups()``: name -> list of ``module``'s parameters, every one
    in exactly one group. ``grad_clip`` then bounds each group's gradient norm
    on its own, so that one part's large gradients (a discriminator's) never
    shrink another's steps, and the log has each group's norm under
    ``"grad_norms"``. Without it the module is one group, ``"all"``.
    """

    module: nn.Module

    def loss(self, batch, generator: torch.Generator) -> torch.Tensor | dict[str, torch.Tensor]: ...


@dataclass(frozen=True)
class TrainConfig:
    """The loop's settings. ``batch_size`` is global: each of N processes takes
    ``batch_size / N`` samples of every batch."""

    output_dir: str
    steps: int = 1000
    batch_size: int = 8
    lr: float = 1e-4
    betas: tuple = (0.9, 0.999)
    weight_decay: float = 0.01
    warmup_steps: int = 0  # linear ramp of the learning rate, then constant
    cooldown_steps: int = 0  # linear ramp of the learning rate to 0 over the last cooldown_steps steps
    grad_clip: float = 1.0  # max gradient norm of each of the job's parameter_groups (else of all); 0 = off
    precision: str = "fp32"  # "bf16": autocast the loss to bfloat16, weights and optimizer stay fp32
    gradient_checkpointing: bool = False
    ema_decay: float = 0.0  # 0 = no EMA
    checkpoint_every: int = 500
    log_every: int = 10
    seed: int = 0
    num_workers: int = 0  # DataLoader worker processes per rank

    # Settings a resumed run may change: they do not change what is computed.
    RESUMABLE = frozenset({"output_dir", "steps", "checkpoint_every", "log_every", "num_workers", "gradient_checkpointing"})

    def __post_init__(self):
        object.__setattr__(self, "betas", tuple(self.betas))
        positive = ("steps", "batch_size", "checkpoint_every", "log_every")
        bad = [f"{name}={getattr(self, name)} (must be > 0)" for name in positive if getattr(self, name) <= 0]
        bad += [f"{name}={getattr(self, name)} (must be >= 0)" for name in ("warmup_steps", "cooldown_steps", "grad_clip", "weight_decay", "num_workers", "lr") if getattr(self, name) < 0]
        if self.cooldown_steps > self.steps:
            bad.append(f"cooldown_steps={self.cooldown_steps} (must be <= steps={self.steps})")
        if self.precision not in PRECISIONS:
            bad.append(f"precision={self.precision!r} (choose one of {PRECISIONS})")
        if not 0 <= self.ema_decay < 1:
            bad.append(f"ema_decay={self.ema_decay} (0 for no EMA, else in (0, 1))")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            bad.append(f"betas={list(self.betas)} (two numbers in [0, 1))")
        if bad:
            raise ValueError(f"invalid training settings: {'; '.join(bad)}")

    def to_dict(self):
        values = asdict(self)
        values["betas"] = list(self.betas)
        return values

    @classmethod
    def from_dict(cls, values):
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"unknown training settings {unknown}; known: {known}")
        missing = [f.name for f in fields(cls) if f.default is MISSING and f.name not in values]
        if missing:
            raise ValueError(f"missing training settings {missing}")
        return config_from(cls, values, lambda problem: ValueError(f"invalid training settings: [train] {problem}"), largest=MAX_COUNT)


@dataclass
class TrainResult:
    step: int
    loss: float  # mean over the last logged window, all ranks
    seconds: float  # training time over all sessions of the run
    clips_per_s: float  # this session's throughput
    checkpoint: str


def default_device():
    """The device a job should build its models on: under torchrun with CUDA,
    the GPU of this process (``LOCAL_RANK``); else GPU 0, or the CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))


def train(job: TrainJob, data, config: TrainConfig, resume=False) -> TrainResult:
    """Train ``job.module`` on ``data`` (a map-style dataset of dicts) for
    ``config.steps`` optimizer steps in all. With ``resume``, continue from
    ``output_dir/checkpoint.safetensors``; without it, an existing checkpoint
    there is refused rather than overwritten. Every check runs before any compute.
    Under torchrun (``WORLD_SIZE`` > 1) every process calls this alike; rank 0
    writes, every rank reads the checkpoint on resume, so ``output_dir`` must be
    on a filesystem all machines share."""
    device, clip_groups = _check_job(job, config)
    created = _init_distributed(device)
    try:
        result = _train(job, data, config, resume, device, clip_groups)
        if dist.is_initialized():
            dist.barrier()
        return result
    finally:
        if created:
            dist.destroy_process_group()


def _init_distributed(device):
    """Join the torchrun process group unless the caller already has: NCCL when
    the job trains on a GPU, gloo when on the CPU (whatever GPUs the machine
    has). True when this call created the group and must end it."""
    if int(os.environ.get("WORLD_SIZE", 1)) <= 1 or dist.is_initialized():
        return False
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return True


def _world():
    return (dist.get_world_size(), dist.get_rank()) if dist.is_initialized() else (1, 0)


def _train(job, data, config, resume, device, clip_groups):
    world, rank = _world()
    _check_data(data, config, world)
    autocast = _autocast(config.precision, device)
    record = _run_record(config, job, len(data))
    path = os.path.join(config.output_dir, CHECKPOINT)
    saved = _read_checkpoint(path, record, job.module) if resume else _refuse_existing(path)

    if hasattr(job, "set_gradient_checkpointing"):
        job.set_gradient_checkpointing(config.gradient_checkpointing)
    optimizer = torch.optim.AdamW(job.module.parameters(), lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)
    ema = [p.detach().clone() for p in job.module.parameters()] if config.ema_decay else []
    generator = torch.Generator().manual_seed(_derive_seed(config.seed, "noise", rank))
    position = {"step": 0, "epoch": 0, "index": 0, "seconds": 0.0}
    if saved is not None:
        position = _restore(saved, job.module, optimizer, ema, generator, config, world, rank)
    model = _loss_module(job, device, world)

    if rank == 0:
        os.makedirs(config.output_dir, exist_ok=True)
        _trim_log(os.path.join(config.output_dir, LOG), position["step"])
    return _run(model, job.module, clip_groups, optimizer, ema, generator, data, config, position, autocast, record, device)


def _check_job(job, config):
    """The job's side of the protocol, checked before compute; returns the
    training device and the gradient clipping groups."""
    if not isinstance(getattr(job, "module", None), nn.Module) or not callable(getattr(job, "loss", None)):
        raise TypeError(f"{type(job).__name__} is not a training job: it needs a `module` (nn.Module of the trainable weights) and `loss(batch, generator)`")
    params = dict(job.module.named_parameters())
    if not params:
        raise ValueError(f"{type(job).__name__}.module has no parameters to train")
    frozen = [name for name, p in params.items() if not p.requires_grad]
    if frozen:
        raise ValueError(f"{type(job).__name__}.module must hold only trainable parameters; frozen: {frozen[:5]} (keep frozen models outside it)")
    if config.gradient_checkpointing and not hasattr(job, "set_gradient_checkpointing"):
        raise ValueError(f"{type(job).__name__} does not support gradient checkpointing; set gradient_checkpointing to false")
    devices = {p.device for p in params.values()}
    if len(devices) > 1:
        raise ValueError(f"{type(job).__name__}.module is spread over {sorted(map(str, devices))}; put it on one device")
    device = devices.pop()
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and device.type == "cuda" and device != default_device():
        raise ValueError(f"this process (LOCAL_RANK {os.environ.get('LOCAL_RANK')}) must train on {default_device()}, the job is on {device}: build it on vldm_core.train.loop.default_device()")
    return device, _clip_groups(job)


def _clip_groups(job):
    """The job's ``parameter_groups()``, checked to split its module's parameters
    exactly (a parameter left out would go unclipped, one listed twice would
    count twice); one group "all" for a job without them."""
    if not hasattr(job, "parameter_groups"):
        return {"all": list(job.module.parameters())}
    where = f"{type(job).__name__}.parameter_groups()"
    groups = job.parameter_groups()
    if not isinstance(groups, dict) or not groups or not all(isinstance(name, str) for name in groups):
        raise ValueError(f"{where} must return a non-empty dict: group name (str) -> list of {type(job).__name__}.module's parameters")
    names = {id(p): name for name, p in job.module.named_parameters()}
    groups = {group: list(params) for group, params in groups.items()}
    owners = {name: [] for name in names.values()}
    for group, params in groups.items():
        if not params:
            raise ValueError(f"{where}: group {group!r} is empty")
        foreign = sum(id(p) not in names for p in params)
        if foreign:
            raise ValueError(f"{where}: group {group!r} holds {foreign} parameters that are not in {type(job).__name__}.module")
        for p in params:
            owners[names[id(p)]].append(group)
    twice = {name: listed for name, listed in owners.items() if len(listed) > 1}
    if twice:
        raise ValueError(f"{where}: parameters listed more than once: {dict(list(twice.items())[:5])}; each must be in exactly one group")
    missing = [name for name, listed in owners.items() if not listed]
    if missing:
        raise ValueError(f"{where}: {len(missing)} parameters of {type(job).__name__}.module are in no group: {missing[:5]}")
    return groups


def _check_data(data, config, world):
    size = len(data)
    if size == 0:
        raise ValueError("the dataset is empty: nothing to train on")
    if size < config.batch_size:
        raise ValueError(f"the dataset has {size} samples, fewer than one batch of {config.batch_size}: lower batch_size or add data")
    if config.batch_size % world:
        raise ValueError(f"batch_size {config.batch_size} (global) does not split over {world} processes: make it a multiple of {world}")


def _autocast(precision, device):
    """A context factory for the loss's forward: nothing for fp32, bf16 autocast
    where the device supports it (refused up front, not at step one, where not)."""
    if precision == "fp32":
        return nullcontext
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"{torch.cuda.get_device_name(device)} does not support bf16: use precision 'fp32'")
    try:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            probe = torch.ones(2, 2, device=device) @ torch.ones(2, 2, device=device)
    except RuntimeError as e:
        raise ValueError(f"bf16 autocast is not available on {device.type} here ({e}): use precision 'fp32'") from e
    if probe.dtype != torch.bfloat16:
        raise ValueError(f"bf16 autocast has no effect on {device.type} in this PyTorch build: use precision 'fp32'")
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16)


# --- run identity: what must match for a resume -------------------------------------------------


def _run_record(config, job, dataset_size):
    """Everything that fixes what a run computes, apart from the settings it may change on resume."""
    may_change = TrainConfig.RESUMABLE - ({"steps"} if config.cooldown_steps else set())  # a cooldown ends at steps
    loop = {k: v for k, v in config.to_dict().items() if k not in may_change}
    job_settings = job.config_dict() if hasattr(job, "config_dict") else {}
    record = {"loop": loop, "job": job_settings, "data": {"samples": dataset_size}}
    return json.loads(json.dumps(record))  # as the checkpoint will hold it: tuples become lists


def _hash(record):
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def _differences(saved, current, prefix=""):
    """Dotted names of the settings that differ between two run records, with both values."""
    out = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key, "<absent>"), current.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key} (checkpoint {a!r}, now {b!r})")
    return out


def _derive_seed(*parts):
    """A 63-bit seed from any parts: independent streams per (seed, purpose, epoch or rank)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") >> 1


# --- checkpoints ---------------------------------------------------------------------------------


def _refuse_existing(path):
    if os.path.exists(path):
        raise FileExistsError(f"{path} exists: resume it (resume=True / --resume) or choose another output_dir")
    return None


def _checkpoint(path):
    """A training checkpoint's header, its format and the fields a resume reads checked."""
    header = open_safetensors(path, f"the checkpoint is damaged; resume from an earlier copy of {os.path.basename(path)} or start a new output_dir", what="checkpoints")
    if header.metadata.get("format") != FORMAT:
        raise header.refuse(f"is not a training checkpoint of this pack (its metadata lacks format={FORMAT!r})", "point output_dir at a folder this trainer wrote")
    if header.integer("format_version") > FORMAT_VERSION:
        raise header.refuse(f"has checkpoint format {header.metadata['format_version']}, this pack reads up to {FORMAT_VERSION}", "update the pack")
    header.text("config_hash")
    header.json("config")
    header.integer("world_size", high=4096)
    position, optimizer = header.json("position"), header.json("optimizer")
    if not isinstance(position.get("step"), int) or position["step"] < 0 or not isinstance(optimizer.get("param_groups"), list):
        raise header.refuse("has a position or optimizer state that is not this trainer's")
    if any(not (isinstance(g, dict) and isinstance(g.get("betas"), list) and isinstance(g.get("lr"), (int, float))) for g in optimizer["param_groups"]):
        raise header.refuse("has optimizer settings that are not AdamW's")
    return header


def _read_checkpoint(path, record, module):
    """The checkpoint's tensors and metadata, after checking it belongs to this
    run (same settings, same trainable weights) and that every field and tensor
    the resume reads is sound; safetensors only."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"nothing to resume: {path} does not exist (start without resume)")
    header = _checkpoint(path)
    if header.metadata["config_hash"] != _hash(record):
        changed = _differences(header.json("config"), record)
        raise header.refuse(f"cannot resume: it was trained with other settings: {'; '.join(changed)}", "resume with its settings or start a new output_dir")
    expected = {f"module.{k}": tuple(v.shape) for k, v in module.state_dict().items()}
    found = {k: shape for k, shape in header.shapes.items() if k.startswith("module.")}
    if expected != found:
        differ = sorted(k for k in set(expected) | set(found) if expected.get(k) != found.get(k))
        raise header.refuse(f"cannot resume: its trainable weights differ from the job's in {differ[:5]}", "resume with the job that wrote it, or start a new output_dir")
    names = [name for name, _ in module.named_parameters()]
    averaged = {f"ema.{name}" for name in names}
    present = {k for k in header.shapes if k.startswith("ema.")}
    if present and present != averaged:
        raise header.refuse(f"holds {len(present)} of its {len(averaged)} EMA weights")
    adam = ("step", "exp_avg", "exp_avg_sq")  # AdamW's state of a parameter that had gradients: all of it or none
    optimizer_state = {f"optim.{name}.{key}" for name in names for key in adam}
    partial = [name for name in names if 0 < sum(f"optim.{name}.{key}" in header.shapes for key in adam) < len(adam)]
    if partial:
        raise header.refuse(f"holds part of the optimizer state of {partial[0]}")
    rng = {f"rng.{rank}" for rank in range(int(header.metadata["world_size"]))}
    unknown = set(header.shapes) - set(expected) - averaged - optimizer_state - rng
    if unknown or not rng <= set(header.shapes):
        raise header.refuse(f"does not hold what its trainer writes ({sorted(unknown)[:3] or 'random-number states missing'})")
    return header.tensors(integers=("rng.*",)), header.metadata


def _save_checkpoint(path, module, optimizer, ema, rng_states, position, record):
    """Write to a temporary name, then rename: a crash mid-write leaves the previous checkpoint intact."""
    names = [name for name, _ in module.named_parameters()]
    tensors = {f"module.{k}": v for k, v in module.state_dict().items()}
    tensors.update({f"ema.{name}": e for name, e in zip(names, ema)})
    for name, param in zip(names, module.parameters()):
        tensors.update({f"optim.{name}.{key}": value for key, value in optimizer.state[param].items()})
    tensors.update({f"rng.{rank}": state for rank, state in enumerate(rng_states)})
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    groups = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.state_dict()["param_groups"]]
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "position": json.dumps(position),
        "config": json.dumps(record),
        "config_hash": _hash(record),
        "optimizer": json.dumps({"type": type(optimizer).__name__, "param_groups": groups}),
        "world_size": str(len(rng_states)),
    }
    temporary = f"{path}.tmp"
    save_file(tensors, temporary, metadata=metadata)
    with open(temporary, "rb") as f:
        os.fsync(f.fileno())
    os.replace(temporary, path)


def _restore(saved, module, optimizer, ema, generator, config, world, rank):
    """Load weights, EMA, optimizer state and this rank's generator; returns the data position."""
    tensors, metadata = saved
    module.load_state_dict({k[len("module."):]: v for k, v in tensors.items() if k.startswith("module.")})
    names = [name for name, _ in module.named_parameters()]
    with torch.no_grad():
        for name, e in zip(names, ema):
            e.copy_(tensors[f"ema.{name}"])
    state = {}
    for i, name in enumerate(names):
        prefix = f"optim.{name}."
        entries = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if entries:
            state[i] = entries
    groups = json.loads(metadata["optimizer"])["param_groups"]
    for group in groups:
        group["params"] = list(range(len(names)))
        group["betas"] = tuple(group["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    position = json.loads(metadata["position"])
    if int(metadata["world_size"]) == world:
        generator.set_state(tensors[f"rng.{rank}"])
    else:
        generator.manual_seed(_derive_seed(config.seed, "noise", rank, position["step"]))
        if rank == 0:
            print(
                f"checkpoint written by {metadata['world_size']} processes, resumed by {world}: data order and weights continue exactly, "
                "the loss's random draws start fresh streams",
                file=sys.stderr,
            )
    return position


def load_checkpoint_weights(path, ema=True):
    """The trained module's state dict from a checkpoint, with the EMA weights in
    place of the raw ones when ``ema`` (what a job exports for the nodes)."""
    tensors = _checkpoint(path).tensors(integers=("rng.*",))
    weights = {k[len("module."):]: v for k, v in tensors.items() if k.startswith("module.")}
    averaged = {k[len("ema."):]: v for k, v in tensors.items() if ema and k.startswith("ema.")}
    if not ema:
        return weights
    if not averaged:
        raise ValueError(f"{path} holds no EMA weights (trained with ema_decay 0): load with ema=False")
    return {**weights, **averaged}


def _gather_rng(generator):
    """Every rank's generator state (rank 0 writes them all)."""
    state = generator.get_state()
    world, _ = _world()
    if world == 1:
        return [state]
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    states = [torch.empty_like(state, device=device) for _ in range(world)]
    dist.all_gather(states, state.to(device))
    return [s.cpu() for s in states]


# --- data ----------------------------------------------------------------------------------------


def _global_batches(size, batch_size, seed, epoch, start):
    """The sample indices of each global batch of an epoch from position ``start``:
    a permutation fixed by (seed, epoch), cut into full batches (the tail that
    does not fill one waits for a later epoch's permutation)."""
    order = torch.randperm(size, generator=torch.Generator().manual_seed(_derive_seed(seed, "data", epoch))).tolist()
    return [order[i : i + batch_size] for i in range(start, size - batch_size + 1, batch_size)]


def _batches(data, config, epoch, index, device):
    """Endless (batch, position after it) pairs from ``(epoch, index)`` on; this
    rank's share of each global batch, collated and on ``device``. The
    dataset's ``set_epoch`` runs before each epoch's DataLoader starts its
    workers, so they see it."""
    world, rank = _world()
    share = config.batch_size // world
    while True:
        if hasattr(data, "set_epoch"):
            data.set_epoch(epoch)
        batches = _global_batches(len(data), config.batch_size, config.seed, epoch, index)
        loader = DataLoader(
            data,
            batch_sampler=[b[rank * share : (rank + 1) * share] for b in batches],
            collate_fn=default_collate,
            num_workers=config.num_workers,
            pin_memory=device.type == "cuda",
        )
        for batch in loader:
            index += config.batch_size
            after = (epoch + 1, 0) if index + config.batch_size > len(data) else (epoch, index)
            yield _to_device(batch, device), after
        epoch, index = epoch + 1, 0


def _to_device(batch, device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


# --- the loop ------------------------------------------------------------------------------------


class _LossModule(nn.Module):
    """``job.loss`` as the forward of a module whose parameters are exactly
    ``job.module``'s: DDP wraps this, so every use of the trainable weights in
    the loss runs inside DDP's forward. The loss is held as a bound method, not
    a submodule, so the job's frozen models stay out of DDP's broadcasts."""

    def __init__(self, job):
        super().__init__()
        self.trainable = job.module
        self.loss_fn = job.loss

    def forward(self, batch, generator):
        return self.loss_fn(batch, generator)


def _loss_module(job, device, world):
    model = _LossModule(job)
    if world == 1:
        return model
    return nn.parallel.DistributedDataParallel(
        model,
        device_ids=[device] if device.type == "cuda" else None,
        find_unused_parameters=getattr(job, "find_unused_parameters", False),
    )


def _learning_rate(config, step):
    warmup = min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else 1.0
    cooldown = min(1.0, (config.steps - step) / config.cooldown_steps) if config.cooldown_steps else 1.0
    return config.lr * min(warmup, cooldown)


def _loss_and_terms(output):
    """The scalar to backpropagate and the detached terms to log, from either form ``job.loss`` may return."""
    if not isinstance(output, dict):
        output = {"loss": output}
    if "loss" not in output:
        raise TypeError(f"job.loss returned a dict without a 'loss' entry (it has {sorted(output)}): put the scalar to minimise under 'loss'")
    bad = {name: f"{type(v).__name__} {tuple(getattr(v, 'shape', ()))}" for name, v in output.items() if not (isinstance(v, torch.Tensor) and v.dim() == 0)}
    if bad:
        raise TypeError(f"job.loss must return a scalar tensor, or a dict of scalar tensors with a 'loss' entry; got {bad}")
    return output["loss"], {name: v.detach().float() for name, v in output.items() if name != "loss"}


def _clip(clip_groups, max_norm, device):
    """Clip each group's gradient to ``max_norm`` (0: no clipping) on its own;
    returns each group's norm before clipping (0, on the CPU, for a group without gradients this step)."""
    return torch.stack([torch.nn.utils.clip_grad_norm_(params, max_norm or float("inf")).to(device) for params in clip_groups.values()])


def _step(model, params, clip_groups, optimizer, ema, batch, generator, config, lr, autocast):
    """One optimizer step; returns the loss, each clipping group's gradient norm
    and the job's terms, all on the device, not synced."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    with autocast():
        loss, terms = _loss_and_terms(model(batch, generator))
    loss.backward()
    norms = _clip(clip_groups, config.grad_clip, loss.device)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if ema:
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1.0 - config.ema_decay)
    return loss.detach().float(), norms, terms


def _run(model, module, clip_groups, optimizer, ema, generator, data, config, position, autocast, record, device):
    world, rank = _world()
    params = list(module.parameters())
    checkpoint = os.path.join(config.output_dir, CHECKPOINT)
    log = _Progress(os.path.join(config.output_dir, LOG), config, position, list(clip_groups), enabled=rank == 0)
    batches = _batches(data, config, position["epoch"], position["index"], device)
    model.train()
    while position["step"] < config.steps:
        batch, (position["epoch"], position["index"]) = next(batches)
        lr = _learning_rate(config, position["step"])
        loss, norms, terms = _step(model, params, clip_groups, optimizer, ema, batch, generator, config, lr, autocast)
        position["step"] += 1
        step = position["step"]
        log.add(step, loss, norms, terms)
        if step % config.log_every == 0 or step == config.steps:
            log.write(step, lr, device)
        if step % config.checkpoint_every == 0 or step == config.steps:
            log.check_finite(step)
            position["seconds"] = log.seconds()
            states = _gather_rng(generator)
            if rank == 0:
                _save_checkpoint(checkpoint, module, optimizer, ema, states, position, record)
    return log.finish(position["step"], checkpoint)


class _Progress:
    """Rank 0's records: log.jsonl lines and a progress bar on stderr (redrawn in
    place on a terminal, one line per log step in files and CI). Losses, terms
    and gradient norms stay on the device between log steps, summed in one
    tensor (loss, global norm, each group's norm, each term), so logging costs
    no sync per step; every step is checked for finite values before the next
    log line or checkpoint, so no checkpoint holds a diverged run."""

    def __init__(self, path, config, position, group_names, enabled):
        self.path, self.config, self.enabled, self.stream = path, config, enabled, sys.stderr
        self.first_step = position["step"]
        self.previous_seconds = position["seconds"]
        self.start = self.window_start = time.perf_counter()
        self.window_steps, self.sums, self.last = 0, None, {}
        self.group_names, self.term_names = group_names, None  # the terms: those of the session's first step
        self.checked = position["step"]  # the last step known finite
        self.interactive = enabled and self.stream.isatty()

    def seconds(self):
        return self.previous_seconds + time.perf_counter() - self.start

    def add(self, step, loss, norms, terms):
        """Sum this step's values into the window's, on the device."""
        if self.term_names is None:
            self.term_names = list(terms)
        if list(terms) != self.term_names:
            raise ValueError(f"job.loss returned the terms {list(terms)} at step {step}, {self.term_names} before: return the same terms every step")
        norms = norms.float()
        values = torch.stack([loss, torch.linalg.vector_norm(norms), *norms, *terms.values()])
        self.sums = values if self.sums is None else self.sums + values
        self.window_steps += 1
        if self.interactive:
            self._draw(step)

    def _mean_over_ranks(self):
        """The window's sums averaged over the ranks (a collective: every rank calls it)."""
        totals = self.sums
        world, _ = _world()
        if world > 1 and totals is not None:
            totals = totals.clone()
            dist.all_reduce(totals)
            totals /= world
        return totals

    def check_finite(self, step, totals=None):
        """Refuse to go on from a NaN or infinite loss, term or gradient norm in
        this window; on every rank's values (a collective), so all stop alike."""
        totals = self._mean_over_ranks() if totals is None else totals
        if totals is not None and not torch.isfinite(totals).all():
            raise FloatingPointError(
                f"the loss, a logged term or a gradient became NaN or infinite between steps {self.checked + 1} and {step}: "
                "lower lr (or raise warmup_steps) or check the data, and resume from the last checkpoint, which predates it"
            )
        self.checked = step

    def write(self, step, lr, device):
        """Average the window's loss, norms and terms over steps and ranks (a collective: every rank calls it)."""
        totals = self._mean_over_ranks()
        self.check_finite(step, totals)
        loss, grad_norm, *rest = (totals / self.window_steps).tolist()
        groups = len(self.group_names)
        now = time.perf_counter()
        record = {
            "step": step,
            "loss": loss,
            "lr": lr,
            "grad_norm": grad_norm,
            "grad_norms": dict(zip(self.group_names, rest[:groups])),
            "terms": dict(zip(self.term_names, rest[groups:])),
            "clips_per_s": self.window_steps * self.config.batch_size / (now - self.window_start),
            "seconds": self.seconds(),
            "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        }
        self.last, self.window_start, self.window_steps, self.sums = record, now, 0, None
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
            self._draw(step)

    def _draw(self, step):
        """The bar with the last logged loss and throughput."""
        bar = "#" * int(24 * step / self.config.steps)
        stats = f" loss {self.last['loss']:.4g}, {self.last['clips_per_s']:.2f} clips/s" if self.last else ""
        line = f"step {step}/{self.config.steps} [{bar:<24}]{stats}"
        self.stream.write(f"\r{line}\x1b[K" if self.interactive else f"{line}\n")
        self.stream.flush()

    def finish(self, step, checkpoint):
        elapsed = time.perf_counter() - self.start
        result = TrainResult(
            step=step,
            loss=self.last.get("loss", float("nan")),
            seconds=self.seconds(),
            clips_per_s=(step - self.first_step) * self.config.batch_size / elapsed if elapsed else 0.0,
            checkpoint=checkpoint,
        )
        if self.enabled:
            end = "\n" if self.interactive else ""
            self.stream.write(
                f"{end}trained {step} steps ({step - self.first_step} in this session, {result.clips_per_s:.2f} clips/s), "
                f"loss {result.loss:.4g}, {result.seconds:.1f} s in all; checkpoint: {checkpoint}\n"
            )
        return result


def _trim_log(path, step):
    """Drop log lines past the resumed step (an interrupted run logged steps that
    will now run again), so the log reads as one run."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        kept = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
    with open(path, "w") as f:
        f.writelines(kept)
