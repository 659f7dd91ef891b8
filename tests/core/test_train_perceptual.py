"""LPIPS from a safetensors file in lpips.LPIPS(net="vgg")'s key layout: the
layout is pinned key by key, the distance behaves as a metric-like loss that
passes gradients to its inputs only, and every malformed file is refused with
the file named and the fix said. Random weights stand in for the real ones."""

import pytest
import torch
from safetensors.torch import save_file

from vldm_core.train.perceptual import LPIPS, load_lpips
from vldm_core.file_checks import WeightFileError

# lpips.LPIPS(net="vgg").state_dict() (lpips 0.1.4) less the lins.{i} aliases of
# lin{i}: ScalingLayer buffers, the convolutions of torchvision's vgg16.features
# at their own indices in lpips's slices [0, 4), [4, 9), [9, 16), [16, 23),
# [23, 30) (ReLUs and max pools hold no weights), and the bias-free 1x1 heads
# behind a dropout.
EXPECTED_SHAPES = {
    "scaling_layer.shift": (1, 3, 1, 1),
    "scaling_layer.scale": (1, 3, 1, 1),
    "net.slice1.0.weight": (64, 3, 3, 3),
    "net.slice1.0.bias": (64,),
    "net.slice1.2.weight": (64, 64, 3, 3),
    "net.slice1.2.bias": (64,),
    "net.slice2.5.weight": (128, 64, 3, 3),
    "net.slice2.5.bias": (128,),
    "net.slice2.7.weight": (128, 128, 3, 3),
    "net.slice2.7.bias": (128,),
    "net.slice3.10.weight": (256, 128, 3, 3),
    "net.slice3.10.bias": (256,),
    "net.slice3.12.weight": (256, 256, 3, 3),
    "net.slice3.12.bias": (256,),
    "net.slice3.14.weight": (256, 256, 3, 3),
    "net.slice3.14.bias": (256,),
    "net.slice4.17.weight": (512, 256, 3, 3),
    "net.slice4.17.bias": (512,),
    "net.slice4.19.weight": (512, 512, 3, 3),
    "net.slice4.19.bias": (512,),
    "net.slice4.21.weight": (512, 512, 3, 3),
    "net.slice4.21.bias": (512,),
    "net.slice5.24.weight": (512, 512, 3, 3),
    "net.slice5.24.bias": (512,),
    "net.slice5.26.weight": (512, 512, 3, 3),
    "net.slice5.26.bias": (512,),
    "net.slice5.28.weight": (512, 512, 3, 3),
    "net.slice5.28.bias": (512,),
    "lin0.model.1.weight": (1, 64, 1, 1),
    "lin1.model.1.weight": (1, 128, 1, 1),
    "lin2.model.1.weight": (1, 256, 1, 1),
    "lin3.model.1.weight": (1, 512, 1, 1),
    "lin4.model.1.weight": (1, 512, 1, 1),
}


@pytest.fixture(scope="module")
def weights():
    """Seeded weights in the layout: a He-scaled trunk, so deep features keep
    their scale, and non-negative heads, as lpips's calibration keeps them."""
    g = torch.Generator().manual_seed(0)
    state = {k: v.clone() for k, v in LPIPS().state_dict().items()}
    for key, w in state.items():
        if key.startswith("net.") and key.endswith(".weight"):
            w.copy_(torch.randn(w.shape, generator=g) * (2 / w[0].numel()) ** 0.5)
        elif key.startswith("net."):
            w.copy_(0.01 * torch.randn(w.shape, generator=g))
        elif key.startswith("lin"):
            w.copy_(torch.rand(w.shape, generator=g))
    return state


@pytest.fixture(scope="module")
def path(weights, tmp_path_factory):
    path = tmp_path_factory.mktemp("lpips") / "lpips_vgg.safetensors"
    save_file(weights, str(path))
    return str(path)


@pytest.fixture(scope="module")
def lpips(path):
    return load_lpips(path)


def frames(n=2, seed=1):
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def write(tmp_path, state, name="edited.safetensors"):
    path = tmp_path / name
    save_file(state, str(path))
    return str(path)


def test_state_dict_has_lpips_vgg_keys_and_shapes():
    assert {k: tuple(v.shape) for k, v in LPIPS().state_dict().items()} == EXPECTED_SHAPES


def test_scaling_layer_holds_lpips_constants(lpips):
    assert lpips.scaling_layer.shift.flatten().tolist() == pytest.approx([-0.030, -0.088, -0.188])
    assert lpips.scaling_layer.scale.flatten().tolist() == pytest.approx([0.458, 0.448, 0.450])


def test_loads_the_files_weights(lpips, weights):
    assert all(torch.equal(v, weights[k]) for k, v in lpips.state_dict().items())


def test_distance_is_zero_to_itself_symmetric_and_one_per_frame(lpips):
    x, y = frames(seed=1), frames(seed=2)
    with torch.no_grad():
        d_xy, d_yx, d_xx = lpips(torch.cat([x, y, x]), torch.cat([y, x, x])).chunk(3)
    assert d_xy.shape == (2,) and (d_xy > 0).all()
    assert torch.equal(d_xx, torch.zeros(2))
    torch.testing.assert_close(d_yx, d_xy)


def test_distance_grows_with_noise(lpips):
    x = frames(n=1).expand(3, -1, -1, -1)
    noise = torch.randn(x.shape[1:], generator=torch.Generator().manual_seed(3))
    levels = torch.tensor([0.02, 0.1, 0.5])[:, None, None, None]
    with torch.no_grad():
        d = lpips(x, (x + levels * noise).clamp(-1, 1))
    assert (d[1:] > d[:-1]).all()


def test_gradients_reach_the_input_and_leave_lpips_frozen(lpips, weights):
    x = frames(seed=1).requires_grad_()
    lpips(x, frames(seed=2)).sum().backward()
    assert x.grad is not None and x.grad.isfinite().all() and x.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in lpips.parameters())
    assert all(torch.equal(v, weights[k]) for k, v in lpips.state_dict().items())


def test_train_mode_is_refused_so_dropout_never_acts(lpips):
    lpips.train()
    assert not any(m.training for m in lpips.modules())


def test_a_layer_of_all_zero_features_leaves_the_gradient_finite(weights):
    """A bias that no input overcomes zeroes relu5_3 everywhere: lpips's own
    normalisation would turn the whole input gradient into NaN."""
    lpips = LPIPS()
    lpips.load_state_dict({**weights, "net.slice5.28.bias": torch.full((512,), -1e4)})
    relu5_3 = []
    lpips.net.slice5.register_forward_hook(lambda module, args, out: relu5_3.append(out.detach().clone()))
    x = frames().requires_grad_()
    lpips(x, frames(seed=2)).sum().backward()
    assert all(torch.equal(out, torch.zeros(2, 512, 1, 1)) for out in relu5_3)
    assert x.grad.isfinite().all() and x.grad.abs().sum() > 0


def test_the_lins_aliases_lpips_writes_load_too(weights, tmp_path):
    heads = {f"lins.{i}.model.1.weight": weights[f"lin{i}.model.1.weight"].clone() for i in range(5)}
    trunk = {k: v for k, v in weights.items() if not k.startswith("lin")}
    for name, state in (("both", {**weights, **heads}), ("aliases", {**trunk, **heads})):
        loaded = load_lpips(write(tmp_path, state, f"{name}.safetensors")).state_dict()
        assert loaded.keys() == weights.keys() and all(torch.equal(v, weights[k]) for k, v in loaded.items())


def test_a_pickle_is_never_opened(tmp_path):
    path = tmp_path / "vgg.pth"
    path.write_bytes(b"\x80\x04not opened")
    with pytest.raises(WeightFileError, match=r"vgg\.pth is a pickled file, which this pack never opens.*save_model\(lpips\.LPIPS\(net=\"vgg\"\)"):
        load_lpips(str(path))


def test_a_file_that_is_not_safetensors_is_refused(tmp_path):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(WeightFileError, match=r"broken\.safetensors is not a readable safetensors file.*save_model"):
        load_lpips(str(path))


def test_missing_heads_are_refused_naming_them(weights, tmp_path):
    trunk_only = {k: v for k, v in weights.items() if not k.startswith("lin")}
    with pytest.raises(WeightFileError, match=r"edited\.safetensors is not LPIPS v0\.1 with the VGG16 trunk: 5 tensors missing \(e\.g\. \['lin0\.model\.1\.weight'.*save_model"):
        load_lpips(write(tmp_path, trunk_only))


def test_foreign_keys_are_refused_naming_them(weights, tmp_path):
    with pytest.raises(WeightFileError, match=r"edited\.safetensors .*1 tensors it should not have \(e\.g\. \['model\.diffusion_model\.x'\]\).*save_model"):
        load_lpips(write(tmp_path, {**weights, "model.diffusion_model.x": torch.zeros(1)}))


def test_wrong_shapes_are_refused_naming_both_shapes(weights, tmp_path):
    alexnet_stem = {**weights, "net.slice1.0.weight": torch.zeros(64, 3, 11, 11)}
    with pytest.raises(WeightFileError, match=r"edited\.safetensors .*wrong shapes: net\.slice1\.0\.weight is \(64, 3, 11, 11\), not \(64, 3, 3, 3\).*save_model"):
        load_lpips(write(tmp_path, alexnet_stem))


def test_disagreeing_aliases_are_refused(weights, tmp_path):
    edited = {**weights, "lins.2.model.1.weight": weights["lin2.model.1.weight"] + 1}
    with pytest.raises(WeightFileError, match=r"edited\.safetensors holds two different weights for LPIPS head 2"):
        load_lpips(write(tmp_path, edited))
