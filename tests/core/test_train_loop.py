import json
import os
import pickle
import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from vldm_core.train import loop
from vldm_core.train.loop import TrainConfig, load_checkpoint_weights, train

from train_toys import Interrupted, PlainJob, ToyData, ToyJob, TwoScalesJob, assert_two_ranks_match_one_process, log_of, toy_case


def config(tmp_path, name="run", **overrides):
    settings = dict(steps=6, batch_size=4, lr=0.05, warmup_steps=2, grad_clip=1.0, ema_decay=0.9, checkpoint_every=2, log_every=2, seed=7)
    return TrainConfig(output_dir=str(tmp_path / name), **{**settings, **overrides})


def checkpoint_of(cfg):
    path = os.path.join(cfg.output_dir, loop.CHECKPOINT)
    with safe_open(path, framework="pt") as f:
        metadata = f.metadata()
    return load_file(path), metadata


def assert_same_checkpoint(a, b):
    (ta, ma), (tb, mb) = a, b
    assert sorted(ta) == sorted(tb)
    assert [k for k in ta if not torch.equal(ta[k], tb[k])] == []
    assert json.loads(ma["position"])["step"] == json.loads(mb["position"])["step"]
    assert {k: v for k, v in json.loads(ma["position"]).items() if k != "seconds"} == {k: v for k, v in json.loads(mb["position"]).items() if k != "seconds"}


def log_lines(cfg):
    with open(os.path.join(cfg.output_dir, loop.LOG)) as f:
        return [json.loads(line) for line in f]


# --- settings ------------------------------------------------------------------------------------


def test_from_dict_rejects_unknown_keys_naming_them_and_the_known_ones():
    with pytest.raises(ValueError) as e:
        TrainConfig.from_dict({"output_dir": "x", "stpes": 3, "learning_rate": 1.0})
    assert "['learning_rate', 'stpes']" in str(e.value) and "'steps'" in str(e.value) and "'ema_decay'" in str(e.value)


def test_from_dict_round_trips_and_names_missing_and_invalid_settings():
    cfg = TrainConfig(output_dir="x", betas=[0.8, 0.9], precision="bf16")
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="missing training settings \\['output_dir'\\]"):
        TrainConfig.from_dict({"steps": 3})
    with pytest.raises(ValueError, match="steps=0.*precision='fp16'"):
        TrainConfig(output_dir="x", precision="fp16", steps=0)
    with pytest.raises(ValueError, match="ema_decay=1"):
        TrainConfig(output_dir="x", ema_decay=1)


# --- what is trained -----------------------------------------------------------------------------


def test_only_the_job_module_is_stepped_and_frozen_weights_stay_bit_identical(tmp_path):
    job = ToyJob(base_requires_grad=True)  # gradients reach the base; the optimizer must still never touch it
    base_before = {k: v.clone() for k, v in job.base.state_dict().items()}
    trained_before = {k: v.clone() for k, v in job.module.state_dict().items()}
    train(job, ToyData(), config(tmp_path, weight_decay=0.5))
    assert all(torch.equal(v, base_before[k]) for k, v in job.base.state_dict().items())
    assert not any(torch.equal(v, trained_before[k]) for k, v in job.module.state_dict().items())
    tensors, _ = checkpoint_of(config(tmp_path))
    assert not any(k.startswith(("module.base", "ema.base")) for k in tensors)


def test_ema_follows_the_weights_with_its_decay(tmp_path):
    job = ToyJob()
    start = [p.detach().clone() for p in job.module.parameters()]
    train(job, ToyData(), config(tmp_path, steps=1, ema_decay=0.9))
    tensors, _ = checkpoint_of(config(tmp_path))
    for (name, p), p0 in zip(job.module.named_parameters(), start):
        assert not torch.equal(p, p0)
        torch.testing.assert_close(tensors[f"ema.{name}"], 0.9 * p0 + 0.1 * p.detach(), rtol=0, atol=1e-7)
    ema = load_checkpoint_weights(os.path.join(config(tmp_path).output_dir, loop.CHECKPOINT))
    raw = load_checkpoint_weights(os.path.join(config(tmp_path).output_dir, loop.CHECKPOINT), ema=False)
    assert torch.equal(ema["0.weight"], tensors["ema.0.weight"]) and torch.equal(raw["0.weight"], job.module[0].weight.detach())


def test_without_ema_the_checkpoint_holds_none_and_says_so(tmp_path):
    train(ToyJob(), ToyData(), config(tmp_path, steps=2, ema_decay=0))
    path = os.path.join(config(tmp_path).output_dir, loop.CHECKPOINT)
    assert not any(k.startswith("ema.") for k in load_file(path))
    with pytest.raises(ValueError, match="no EMA weights"):
        load_checkpoint_weights(path)


def test_warmup_ramps_the_learning_rate_and_the_log_says_so(tmp_path, capsys):
    cfg = config(tmp_path, warmup_steps=4, log_every=1)
    result = train(ToyJob(), ToyData(), cfg)
    lines = log_lines(cfg)
    assert [line["step"] for line in lines] == [1, 2, 3, 4, 5, 6]
    assert [line["lr"] for line in lines] == pytest.approx([0.0125, 0.025, 0.0375, 0.05, 0.05, 0.05])
    assert all(line["clips_per_s"] > 0 and line["loss"] > 0 and line["peak_memory_gib"] is None for line in lines)
    assert all(line["terms"] == {} and line["grad_norms"] == {"all": pytest.approx(line["grad_norm"], rel=1e-6)} for line in lines)
    assert result.step == 6 and result.loss == lines[-1]["loss"]
    err = capsys.readouterr().err
    assert "step 6/6" in err and "clips/s" in err and "trained 6 steps" in err


def test_cooldown_ramps_the_learning_rate_down_over_the_last_steps(tmp_path):
    cfg = config(tmp_path, steps=8, warmup_steps=2, cooldown_steps=4, log_every=1)
    train(ToyJob(), ToyData(), cfg)
    assert [line["lr"] for line in log_lines(cfg)] == pytest.approx([0.025, 0.05, 0.05, 0.05, 0.05, 0.0375, 0.025, 0.0125])
    with pytest.raises(ValueError, match=r"cooldown_steps=9 \(must be <= steps=8\)"):
        config(tmp_path, steps=8, cooldown_steps=9)


def test_a_run_with_a_cooldown_resumes_only_to_the_same_length(tmp_path):
    """The cooldown ends at ``steps``: another length would change every learning rate after the checkpoint."""
    train(ToyJob(), ToyData(), config(tmp_path, steps=4, cooldown_steps=2))
    with pytest.raises(ValueError, match=r"loop.steps \(checkpoint 4, now 6\)"):
        train(ToyJob(), ToyData(), config(tmp_path, steps=6, cooldown_steps=2), resume=True)


def test_bf16_autocasts_the_loss_and_keeps_fp32_weights(tmp_path):
    job = ToyJob()
    train(job, ToyData(), config(tmp_path, steps=2, precision="bf16"))
    assert set(job.dtypes) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in job.module.parameters())
    assert torch.isfinite(torch.tensor(log_lines(config(tmp_path))[-1]["loss"]))


def test_gradient_checkpointing_is_handed_to_the_job_and_changes_nothing(tmp_path):
    plain, checkpointed = ToyJob(), ToyJob()
    train(plain, ToyData(), config(tmp_path, name="plain"))
    train(checkpointed, ToyData(), config(tmp_path, name="ckpt", gradient_checkpointing=True))
    assert plain.checkpointing is False and checkpointed.checkpointing is True
    assert all(torch.equal(a, b) for a, b in zip(plain.module.parameters(), checkpointed.module.parameters()))


# --- terms and parameter groups ------------------------------------------------------------------


def test_the_terms_a_loss_returns_are_logged_as_means_over_each_window(tmp_path):
    job = TwoScalesJob()
    cfg = config(tmp_path, steps=4, log_every=2)
    train(job, ToyData(), cfg)
    for line, window in zip(log_lines(cfg), (job.outputs[:2], job.outputs[2:]), strict=True):
        means = {name: sum(output[name].item() for output in window) / 2 for name in ("loss", "small", "large")}
        assert line["terms"] == pytest.approx({"small": means["small"], "large": means["large"]}, rel=1e-6)
        assert line["loss"] == pytest.approx(means["loss"], rel=1e-6)


def test_each_parameter_group_is_clipped_on_its_own(tmp_path):
    """After one step AdamW's first moment is (1 - beta1) * the clipped gradient:
    each group's must be its own gradient clipped alone, though the two are a
    thousand times apart (one global clip would all but stop the small head)."""
    job, reference = TwoScalesJob(), TwoScalesJob()
    cfg = config(tmp_path, steps=1, warmup_steps=0, log_every=1, grad_clip=1.0)
    train(job, ToyData(), cfg)
    reference.loss(job.batches[0], None)["loss"].backward()
    tensors, _ = checkpoint_of(cfg)
    line, = log_lines(cfg)
    norms = {group: torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip).item() for group, params in reference.parameter_groups().items()}
    assert 1 < norms["small"] < norms["large"] / 100
    assert line["grad_norms"] == pytest.approx(norms, rel=1e-6)
    assert line["grad_norm"] == pytest.approx((norms["small"] ** 2 + norms["large"] ** 2) ** 0.5, rel=1e-6)
    for group, head in reference.module.items():
        clipped = {name: tensors[f"optim.{group}.{name}.exp_avg"] / (1 - cfg.betas[0]) for name, _ in head.named_parameters()}
        assert torch.linalg.vector_norm(torch.stack([g.norm() for g in clipped.values()])) == pytest.approx(cfg.grad_clip, rel=1e-5)
        for name, p in head.named_parameters():
            torch.testing.assert_close(clipped[name], p.grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("groups, message", [
    (lambda m: [list(m.parameters())], "must return a non-empty dict"),
    (lambda m: {}, "must return a non-empty dict"),
    (lambda m: {"small": list(m["small"].parameters()), "large": []}, "group 'large' is empty"),
    (lambda m: {"small": list(m["small"].parameters())}, "2 parameters of TwoScalesJob.module are in no group: ['large.weight', 'large.bias']"),
    (lambda m: {"all": list(m.parameters()), "small": list(m["small"].parameters())}, "listed more than once: {'small.weight': ['all', 'small']"),
    (lambda m: {"all": list(m.parameters()), "other": [torch.nn.Parameter(torch.zeros(1))]}, "group 'other' holds 1 parameters that are not in TwoScalesJob.module"),
], ids=["list", "empty", "empty group", "left out", "twice", "foreign"])
def test_parameter_groups_that_do_not_split_the_module_are_refused_before_any_compute(tmp_path, groups, message):
    job = TwoScalesJob()
    job.parameter_groups = lambda: groups(job.module)
    with pytest.raises(ValueError, match=re.escape(message)):
        train(job, ToyData(), config(tmp_path))
    assert job.batches == [] and not os.path.exists(config(tmp_path).output_dir)


# --- data ----------------------------------------------------------------------------------------


def test_each_epoch_is_a_seeded_permutation_in_full_batches(tmp_path):
    data = ToyData(size=10)
    train(ToyJob(), data, config(tmp_path, steps=6, batch_size=4))
    epochs = [data.fetched[i : i + 8] for i in range(0, 24, 8)]  # 2 full batches per epoch; 2 samples wait
    assert all(len(set(e)) == 8 for e in epochs)
    assert len({tuple(e) for e in epochs}) == 3
    assert data.epochs == [0, 1, 2]
    again = ToyData(size=10)
    train(ToyJob(), again, config(tmp_path, name="again", steps=6, batch_size=4))
    other_seed = ToyData(size=10)
    train(ToyJob(), other_seed, config(tmp_path, name="other", steps=6, batch_size=4, seed=8))
    assert again.fetched == data.fetched and other_seed.fetched != data.fetched


class Spy(ToyJob):
    def __init__(self):
        super().__init__()
        self.batches = []

    def loss(self, batch, generator):
        self.batches.append(batch)
        return super().loss(batch, generator)


def test_batches_are_collated_dicts_with_captions(tmp_path):
    job = Spy()
    train(job, ToyData(), config(tmp_path, steps=1))
    batch = job.batches[0]
    assert batch["x"].shape == (4, 4) and len(batch["caption"]) == 4 and batch["caption"][0].startswith("clip ")


def test_loader_workers_see_the_epoch_and_change_nothing(tmp_path):
    inline, workers = Spy(), Spy()
    train(inline, ToyData(), config(tmp_path, name="inline", steps=4))
    train(workers, ToyData(), config(tmp_path, name="workers", steps=4, num_workers=1))
    assert [b["epoch"].tolist() for b in workers.batches] == [[0] * 4, [0] * 4, [1] * 4, [1] * 4]
    assert all(torch.equal(a["x"], b["x"]) for a, b in zip(inline.batches, workers.batches))
    assert all(torch.equal(a, b) for a, b in zip(inline.module.parameters(), workers.module.parameters()))


# --- checkpoints and resume ----------------------------------------------------------------------


@pytest.mark.parametrize("interruption", ["data raises at step 6", "stopped at step 4"])
def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, interruption):
    whole = config(tmp_path, name="whole", steps=8)
    train(ToyJob(), ToyData(), whole)

    parts = config(tmp_path, name="parts", steps=8)
    if interruption.startswith("data"):
        with pytest.raises(Interrupted):
            train(ToyJob(), ToyData(fail_after=5 * 4 + 1), parts)  # checkpoint at 4, dies inside step 6
        assert json.loads(checkpoint_of(parts)[1]["position"])["step"] == 4
    else:
        train(ToyJob(), ToyData(), config(tmp_path, name="parts", steps=4))
    data = ToyData()
    job = ToyJob()
    with torch.no_grad():
        job.module[0].weight.mul_(-3)  # other starting weights: they must come from the checkpoint
    train(job, data, parts, resume=True)

    assert data.epochs[0] == 2  # resumed at step 4: the first batch of epoch 2
    assert_same_checkpoint(checkpoint_of(whole), checkpoint_of(parts))
    assert [line["step"] for line in log_lines(parts)] == [2, 4, 6, 8]
    assert [line["loss"] for line in log_lines(parts)] == pytest.approx([line["loss"] for line in log_lines(whole)], rel=1e-6)


def test_resume_restarts_at_the_exact_next_sample(tmp_path):
    whole_data = ToyData()
    train(ToyJob(), whole_data, config(tmp_path, name="whole", steps=8))
    train(ToyJob(), ToyData(), config(tmp_path, name="parts", steps=5, checkpoint_every=5))
    data = ToyData()
    train(ToyJob(), data, config(tmp_path, name="parts", steps=8), resume=True)
    assert data.fetched == whole_data.fetched[5 * 4 :]
    assert data.epochs[0] == 2  # step 5 is the first batch of epoch 2 (two full batches an epoch)


def test_resume_with_other_settings_is_refused_naming_them_before_any_compute(tmp_path):
    train(ToyJob(), ToyData(), config(tmp_path, steps=2))
    before = checkpoint_of(config(tmp_path))
    job = ToyJob(settings={"width": 16})
    with pytest.raises(ValueError) as e:
        train(job, ToyData(), config(tmp_path, steps=4, lr=0.1, log_every=1), resume=True)
    message = str(e.value)
    assert "loop.lr (checkpoint 0.05, now 0.1)" in message and "job.width (checkpoint 8, now 16)" in message
    assert "loop.steps" not in message and "loop.log_every" not in message  # settings a resume may change
    assert job.calls == 0
    assert_same_checkpoint(before, checkpoint_of(config(tmp_path)))
    with pytest.raises(ValueError, match="data.samples \\(checkpoint 10, now 12\\)"):
        train(ToyJob(), ToyData(size=12), config(tmp_path, steps=4), resume=True)


def test_resume_may_change_the_length_and_logging(tmp_path):
    train(ToyJob(), ToyData(), config(tmp_path, steps=2))
    result = train(ToyJob(), ToyData(), config(tmp_path, steps=3, log_every=1, checkpoint_every=3, num_workers=0), resume=True)
    assert result.step == 3 and json.loads(checkpoint_of(config(tmp_path))[1]["position"])["step"] == 3


def test_resume_without_a_checkpoint_and_a_fresh_run_over_one_are_refused(tmp_path):
    job = ToyJob()
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train(job, ToyData(), config(tmp_path), resume=True)
    train(ToyJob(), ToyData(), config(tmp_path, steps=2))
    with pytest.raises(FileExistsError, match="resume"):
        train(job, ToyData(), config(tmp_path))
    assert job.calls == 0


def test_a_checkpoint_of_other_weights_or_no_checkpoint_at_all_is_refused(tmp_path):
    train(PlainJob(), ToyData(), config(tmp_path, steps=2))  # same settings, other trainable module
    with pytest.raises(ValueError, match="trainable weights differ"):
        train(ToyJob(settings={}), ToyData(), config(tmp_path), resume=True)
    path = os.path.join(config(tmp_path).output_dir, loop.CHECKPOINT)
    Path(path).write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        train(PlainJob(), ToyData(), config(tmp_path), resume=True)


def test_resume_never_unpickles(tmp_path, monkeypatch):
    train(ToyJob(), ToyData(), config(tmp_path, steps=2))

    def forbidden(*args, **kwargs):
        raise AssertionError("unpickling during resume")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    assert train(ToyJob(), ToyData(), config(tmp_path, steps=4), resume=True).step == 4


def test_the_optimizer_state_is_saved_per_parameter_with_its_settings(tmp_path):
    job = ToyJob()
    train(job, ToyData(), config(tmp_path, steps=2, betas=(0.8, 0.95)))
    tensors, metadata = checkpoint_of(config(tmp_path))
    for name, _ in job.module.named_parameters():
        assert tensors[f"optim.{name}.step"].item() == 2
        assert tensors[f"optim.{name}.exp_avg"].abs().sum() > 0 and tensors[f"optim.{name}.exp_avg_sq"].abs().sum() > 0
    optimizer = json.loads(metadata["optimizer"])
    assert optimizer["type"] == "AdamW" and optimizer["param_groups"][0]["betas"] == [0.8, 0.95]
    assert tensors["rng.0"].dtype == torch.uint8 and metadata["world_size"] == "1"


def test_a_crash_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    cfg = config(tmp_path, steps=4)
    writes = []
    real = loop.save_file

    def dying(tensors, path, metadata):
        writes.append(path)
        if len(writes) == 2:
            Path(path).write_bytes(b"half a file")
            raise KeyboardInterrupt
        real(tensors, path, metadata=metadata)

    monkeypatch.setattr(loop, "save_file", dying)
    with pytest.raises(KeyboardInterrupt):
        train(ToyJob(), ToyData(), cfg)
    assert not writes[0].endswith(loop.CHECKPOINT)  # written under another name, then renamed
    assert json.loads(checkpoint_of(cfg)[1]["position"])["step"] == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_bf16_logs_peak_memory_and_resumes_exactly(tmp_path):
    device = loop.default_device()
    whole = config(tmp_path, name="whole", steps=8, precision="bf16")
    job = ToyJob(device=device)
    train(job, ToyData(), whole)
    assert set(job.dtypes) == {torch.bfloat16}
    assert all(line["peak_memory_gib"] > 0 for line in log_lines(whole))
    parts = config(tmp_path, name="parts", steps=5, precision="bf16")
    train(ToyJob(device=device), ToyData(), parts)
    train(ToyJob(device=device), ToyData(), config(tmp_path, name="parts", steps=8, precision="bf16"), resume=True)
    assert_same_checkpoint(checkpoint_of(whole), checkpoint_of(parts))


# --- bad jobs and data, refused before compute ---------------------------------------------------


def test_bad_jobs_and_data_are_refused_before_any_compute(tmp_path):
    frozen_inside = ToyJob()
    frozen_inside.module[0].requires_grad_(False)
    with pytest.raises(ValueError, match="only trainable parameters; frozen: \\['0.weight', '0.bias'\\]"):
        train(frozen_inside, ToyData(), config(tmp_path))
    plain = PlainJob()
    with pytest.raises(ValueError, match="does not support gradient checkpointing"):
        train(plain, ToyData(), config(tmp_path, gradient_checkpointing=True))
    with pytest.raises(ValueError, match="dataset is empty"):
        train(plain, ToyData(size=0), config(tmp_path))
    with pytest.raises(ValueError, match="3 samples, fewer than one batch of 4"):
        train(plain, ToyData(size=3), config(tmp_path))
    with pytest.raises(TypeError, match="not a training job"):
        train(object(), ToyData(), config(tmp_path))
    assert frozen_inside.calls == 0 and plain.calls == 0
    assert not os.path.exists(config(tmp_path).output_dir)


def test_a_loss_that_is_not_a_scalar_or_not_finite_stops_the_run(tmp_path):
    class Vector(PlainJob):
        def loss(self, batch, generator):
            return (self.module(batch["x"]).squeeze(-1) - batch["y"]) ** 2

    class Exploding(PlainJob):
        def loss(self, batch, generator):
            return super().loss(batch, generator) * float("inf")

    with pytest.raises(TypeError, match="scalar tensor"):
        train(Vector(), ToyData(), config(tmp_path, name="vector"))
    with pytest.raises(FloatingPointError, match="between steps 1 and 2"):
        train(Exploding(), ToyData(), config(tmp_path, name="exploding"))
    late = config(tmp_path, name="late", steps=6, log_every=6, checkpoint_every=2)

    class LateNaN(PlainJob):
        def loss(self, batch, generator):
            return super().loss(batch, generator) * (float("nan") if self.calls == 3 else 1.0)

    with pytest.raises(FloatingPointError, match="between steps 3 and 4"):
        train(LateNaN(), ToyData(), late)  # no log line before step 6: the checkpoint at step 4 checks
    assert json.loads(checkpoint_of(late)[1]["position"])["step"] == 2


class Terms(PlainJob):
    """Returns the loss and ``terms(calls)``: a dict of names to values."""

    def __init__(self, terms):
        super().__init__()
        self.terms = terms

    def loss(self, batch, generator):
        loss = super().loss(batch, generator)
        return {name: loss * value if isinstance(value, float) else value for name, value in {"loss": 1.0, **self.terms(self.calls)}.items()}


@pytest.mark.parametrize("terms, error, message", [
    (lambda calls: {"loss": None}, TypeError, "a dict of scalar tensors with a 'loss' entry; got {'loss': 'NoneType ()'}"),
    (lambda calls: {"a": torch.ones(2)}, TypeError, "got {'a': 'Tensor (2,)'}"),
    (lambda calls: {"a": 1.0} if calls == 1 else {"b": 1.0}, ValueError, "terms ['b'] at step 2, ['a'] before"),
    (lambda calls: {"a": float("inf")}, FloatingPointError, "between steps 1 and 2"),
], ids=["loss not a tensor", "term not a scalar", "terms change", "term not finite"])
def test_loss_dicts_with_bad_or_changing_terms_stop_the_run(tmp_path, terms, error, message):
    with pytest.raises(error, match=re.escape(message)):
        train(Terms(terms), ToyData(), config(tmp_path))


def test_a_loss_dict_without_a_loss_is_refused(tmp_path):
    class NoLoss(PlainJob):
        def loss(self, batch, generator):
            return {"total": super().loss(batch, generator)}

    with pytest.raises(TypeError, match=re.escape("without a 'loss' entry (it has ['total'])")):
        train(NoLoss(), ToyData(), config(tmp_path))


# --- distributed ---------------------------------------------------------------------------------


def test_two_gloo_ranks_match_each_other_and_one_process_with_the_same_global_batch(tmp_path, capsys):
    _, settings = assert_two_ranks_match_one_process(toy_case, tmp_path)
    out = tmp_path / "ddp"
    tensors, metadata = load_file(str(out / loop.CHECKPOINT)), safe_open(str(out / loop.CHECKPOINT), "pt").metadata()
    assert metadata["world_size"] == "2" and {"rng.0", "rng.1"} <= set(tensors) and not torch.equal(tensors["rng.0"], tensors["rng.1"])
    assert [line["step"] for line in log_of(out)] == [1, 2, 3, 4]  # rank 0 logs alone

    # A checkpoint of two ranks resumes in one process: same data order and weights from there on.
    longer = TrainConfig(output_dir=str(tmp_path / "single"), **{**settings, "steps": settings["steps"] + 2})
    train(ToyJob(noise=0.0), ToyData(), TrainConfig(**{**longer.to_dict(), "output_dir": str(out)}), resume=True)
    assert "written by 2 processes, resumed by 1" in capsys.readouterr().err
    train(ToyJob(noise=0.0), ToyData(), longer, resume=True)
    resumed, reference = load_checkpoint_weights(str(out / loop.CHECKPOINT)), load_checkpoint_weights(os.path.join(longer.output_dir, loop.CHECKPOINT))
    for k in reference:
        torch.testing.assert_close(resumed[k], reference[k], rtol=0, atol=1e-6)
