"""FID's InceptionV3 and FVD's I3D: their state dicts are the public layouts
key for key, their files round-trip, and the metrics behave on tiny sets.
(Outputs were checked to match pytorch-fid's and pytorch-i3d's own modules
exactly on shared random weights when these were written.)"""

import pytest
import torch
from safetensors.torch import save_file

from vldm_core.metrics.frechet import FeatureStats
from vldm_core.metrics import i3d as i3d_module
from vldm_core.metrics import inception as inception_module
from vldm_core.metrics.i3d import MIN_FRAMES, InceptionI3d, load_i3d, prepare_clips
from vldm_core.metrics.inception import FIDInceptionV3, load_fid_inception
from vldm_core.weights import WeightFileError

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")

# pytorch-fid's fid_inception_v3(): torchvision's Inception3 names, block by block
INCEPTION_BRANCHES = {
    "A": ("branch1x1", "branch5x5_1", "branch5x5_2", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3", "branch_pool"),
    "B": ("branch3x3", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"),
    "C": ("branch1x1", *(f"branch7x7_{i}" for i in (1, 2, 3)), *(f"branch7x7dbl_{i}" for i in (1, 2, 3, 4, 5)), "branch_pool"),
    "D": ("branch3x3_1", "branch3x3_2", *(f"branch7x7x3_{i}" for i in (1, 2, 3, 4))),
    "E": ("branch1x1", "branch3x3_1", "branch3x3_2a", "branch3x3_2b", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3a", "branch3x3dbl_3b", "branch_pool"),
}
INCEPTION_BLOCKS = {
    **{name: None for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3")},
    **{name: "A" for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d")},
    "Mixed_6a": "B",
    **{name: "C" for name in ("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e")},
    "Mixed_7a": "D",
    "Mixed_7b": "E",
    "Mixed_7c": "E",
}
INCEPTION_KEYS = {
    f"{block}.{branch}{part}"
    for block, kind in INCEPTION_BLOCKS.items()
    for branch in ([""] if kind is None else [b + "." for b in INCEPTION_BRANCHES[kind]])
    for part in ["conv.weight", *(f"bn.{p}" for p in BN)]
}

# pytorch-i3d's InceptionI3d: Unit3D (conv3d, bn) per stem unit and per branch
I3D_UNITS = ["Conv3d_1a_7x7", "Conv3d_2b_1x1", "Conv3d_2c_3x3"] + [
    f"Mixed_{m}.{b}" for m in ("3b", "3c", "4b", "4c", "4d", "4e", "4f", "5b", "5c") for b in ("b0", "b1a", "b1b", "b2a", "b2b", "b3b")
]
I3D_KEYS = {f"{u}.{p}" for u in I3D_UNITS for p in ["conv3d.weight", *(f"bn.{q}" for q in BN)]} | {"logits.conv3d.weight", "logits.conv3d.bias"}


def randomize(model, seed):
    """Weights that keep activations O(1) through the depth (default init fades them to ~1e-8)."""
    g = torch.Generator().manual_seed(seed)
    for key, value in model.state_dict().items():
        if key.endswith("conv.weight") or key.endswith("conv3d.weight"):
            value.copy_(torch.randn(value.shape, generator=g) * (2 / value[0].numel()) ** 0.5)
        elif key.endswith("running_mean") or key.endswith(".bias"):
            value.copy_(torch.randn(value.shape, generator=g) * 0.1)
        elif key.endswith("running_var") or key.endswith("bn.weight"):
            value.copy_(0.5 + torch.rand(value.shape, generator=g))
    return model.eval()


def elements(state):
    return sum(v.numel() for k, v in state.items() if not k.endswith("num_batches_tracked"))


def saved(model, path, extra=None):
    """The model's state as a user's converted file: no num_batches_tracked (pre-0.4.1 checkpoints), plus ``extra``."""
    state = {k: v.contiguous() for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    save_file({**state, **(extra or {})}, str(path))
    return str(path)


def assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa if not k.endswith("num_batches_tracked"))


# ---- InceptionV3 (FID) ----


@pytest.fixture(scope="module")
def inception():
    return randomize(FIDInceptionV3(), seed=0)


def assert_frechet_separates(first, second):
    """The Fréchet distance of two feature sets is positive, and of a set with itself about 0."""
    a, b = FeatureStats().update(first), FeatureStats().update(second)
    different = a.frechet_distance(b)
    assert different > 0
    assert a.frechet_distance(a) < 1e-6 * different


def test_inception_state_dict_is_fid_inception_v3_s_without_its_classifier(inception):
    state = inception.state_dict()
    assert set(state) == INCEPTION_KEYS and len(state) == 564  # fid_inception_v3() has 566 with fc.weight and fc.bias
    assert elements(state) == 21_820_000
    shapes = {
        "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
        "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
        "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3),
        "Mixed_6b.branch7x7_2.conv.weight": (128, 128, 1, 7),
        "Mixed_6e.branch7x7dbl_2.conv.weight": (192, 192, 7, 1),
        "Mixed_7a.branch3x3_2.conv.weight": (320, 192, 3, 3),
        "Mixed_7b.branch3x3dbl_1.conv.weight": (448, 1280, 1, 1),
        "Mixed_7c.branch_pool.conv.weight": (192, 2048, 1, 1),
    }
    assert {k: tuple(state[k].shape) for k in shapes} == shapes


def test_inception_file_round_trips_with_the_unused_classifier(inception, tmp_path):
    path = saved(inception, tmp_path / "pt_inception.safetensors", {"fc.weight": torch.zeros(1008, 2048), "fc.bias": torch.zeros(1008)})
    assert_same_weights(load_fid_inception(path), inception)


def test_fid_features_are_2048_per_frame_and_give_fid_zero_to_itself(inception):
    g = torch.Generator().manual_seed(1)
    noise = torch.rand(2, 3, 40, 56, generator=g)
    flat = torch.linspace(0, 1, 56).expand(2, 3, 40, 56) * torch.tensor([0.2, 0.9]).view(2, 1, 1, 1)
    with torch.no_grad():
        features = inception(torch.cat([noise, flat]))
        single = inception(noise[:1])
    assert features.shape == (4, inception_module.FEATURES) == (4, 2048) and features.isfinite().all()
    torch.testing.assert_close(single[0], features[0], rtol=1e-4, atol=1e-5)
    assert_frechet_separates(features[:2], features[2:])


def test_pytorch_fid_wrapper_state_is_refused_with_the_fix(inception, tmp_path):
    wrapped = {f"blocks.0.0.{k.split('.', 1)[1]}": v for k, v in inception.Conv2d_1a_3x3.state_dict().items()}
    save_file({k: v.contiguous() for k, v in wrapped.items()}, str(tmp_path / "wrapper.safetensors"))
    with pytest.raises(WeightFileError, match=r"wrapper.safetensors does not hold .*470 tensors missing.*InceptionV3 wrapper.*fid_inception_v3\(\)"):
        load_fid_inception(tmp_path / "wrapper.safetensors")


def test_pickles_are_never_opened_and_broken_files_are_named(tmp_path):
    pickle = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    pickle.write_bytes(b"\x80\x02}q\x00.")
    with pytest.raises(WeightFileError, match=r"pt_inception-2015-12-05-6726825d.pth is a pickled file, which this pack never opens.*save_file\(fid_inception_v3"):
        load_fid_inception(pickle)
    broken = tmp_path / "i3d.safetensors"
    broken.write_bytes(b"not a safetensors file")
    with pytest.raises(WeightFileError, match=r"i3d.safetensors is not a readable safetensors file.*rgb_imagenet.pt"):
        load_i3d(broken)


# ---- I3D (FVD) ----


@pytest.fixture(scope="module")
def i3d():
    return randomize(InceptionI3d(), seed=2)


def test_i3d_state_dict_is_pytorch_i3d_s(i3d):
    state = i3d.state_dict()
    assert set(state) == I3D_KEYS and len(state) == 344
    assert elements(state) == 12_711_824
    shapes = {
        "Conv3d_1a_7x7.conv3d.weight": (64, 3, 7, 7, 7),
        "Conv3d_2c_3x3.conv3d.weight": (192, 64, 3, 3, 3),
        "Mixed_3b.b0.conv3d.weight": (64, 192, 1, 1, 1),
        "Mixed_4b.b1b.conv3d.weight": (208, 96, 3, 3, 3),
        "Mixed_5c.b3b.conv3d.weight": (128, 832, 1, 1, 1),
        "logits.conv3d.weight": (400, 1024, 1, 1, 1),
        "logits.conv3d.bias": (400,),
    }
    assert {k: tuple(state[k].shape) for k in shapes} == shapes


def test_i3d_file_round_trips(i3d, tmp_path):
    assert_same_weights(load_i3d(saved(i3d, tmp_path / "i3d_rgb_imagenet.safetensors")), i3d)


def test_i3d_weights_of_another_class_count_are_refused_naming_the_shape(i3d, tmp_path):
    path = saved(i3d, tmp_path / "rgb_charades.safetensors", {"logits.conv3d.weight": torch.zeros(157, 1024, 1, 1, 1), "logits.conv3d.bias": torch.zeros(157)})
    with pytest.raises(WeightFileError, match=r"rgb_charades.safetensors does not hold .*logits.conv3d.weight is \(157, 1024, 1, 1, 1\), not \(400, 1024, 1, 1, 1\)"):
        load_i3d(path)


def test_short_clips_are_looped_to_the_frames_i3d_needs():
    clips = torch.arange(4.0).view(1, 4, 1, 1, 1).expand(1, 4, 3, 8, 8) / 4
    prepared = prepare_clips(clips)
    assert prepared.shape == (1, 3, MIN_FRAMES, 224, 224)
    assert prepared[0, 0, :, 0, 0].tolist() == [2 * (t % 4) / 4 - 1 for t in range(MIN_FRAMES)]
    assert prepare_clips(torch.rand(2, 12, 3, 16, 16)).shape == (2, 3, 12, 224, 224)


def test_fvd_features_are_400_time_averaged_logits_and_give_fvd_zero_to_itself(i3d):
    g = torch.Generator().manual_seed(3)
    noise = torch.rand(2, MIN_FRAMES, 3, 16, 16, generator=g)
    still = torch.linspace(0, 1, 16).expand(2, MIN_FRAMES, 3, 16, 16) * torch.tensor([0.3, 0.8]).view(2, 1, 1, 1, 1)
    with torch.no_grad():
        features = i3d(torch.cat([noise, still]))
        single = i3d(still[1:])
    assert features.shape == (4, i3d_module.FEATURES) == (4, 400) and features.isfinite().all()
    torch.testing.assert_close(single[0], features[3], rtol=1e-4, atol=1e-5)
    assert_frechet_separates(features[:2], features[2:])
