"""LPIPS (Zhang et al. 2018, v0.1, VGG16 trunk) as the temporal decoder's
perceptual loss, computed as the ``lpips`` package computes it, with weights
read from safetensors only.

``lpips`` ships its calibrated heads as a pickle and torchvision ships VGG16 as
another; this pack never unpickles, so the user converts them once, in their
own environment, with both packages installed::

    import lpips
    from safetensors.torch import save_model
    save_model(lpips.LPIPS(net="vgg"), "lpips_vgg.safetensors")

``save_model``, not ``save_file(model.state_dict())``: lpips registers each head
twice, as ``lin0``..``lin4`` and in the list ``lins``, and ``save_file`` refuses
tensors that share memory; ``save_model`` keeps one name per head. Files that
carry the ``lins.{i}`` names load as well. The trunk is built here rather than
taken from torchvision, which the pack does not depend on.
"""

from collections import OrderedDict

import torch
from torch import nn

from ..file_checks import WeightFileError, open_safetensors, state_problems

# torchvision's vgg16 config "D" up to relu5_3 (its last max pool, which lpips never reaches, left out):
# 3x3 convolutions (padding 1) each followed by a ReLU, "M" a 2x2 max pool.
VGG16_CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
# lpips.pretrained_networks.vgg16 cuts vgg16.features after relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3.
SLICE_ENDS = (4, 9, 16, 23, 30)
CHANNELS = (64, 128, 256, 512, 512)
CONVERSION = 'safetensors.torch.save_model(lpips.LPIPS(net="vgg"), "lpips_vgg.safetensors") (see vldm_core/train/perceptual.py)'


class ScalingLayer(nn.Module):
    """Maps [-1, 1] inputs to the ImageNet normalisation VGG16 was trained on."""

    def __init__(self):
        super().__init__()
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None])
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450])[None, :, None, None])

    def forward(self, x):
        return (x - self.shift) / self.scale


class VGG16(nn.Module):
    """vgg16.features as five slices (``slice1``..``slice5``) that keep
    torchvision's layer indices, so the keys match lpips's; forward gives the
    activation at the end of each slice."""

    def __init__(self):
        super().__init__()
        layers, in_channels = [], 3
        for v in VGG16_CONFIG:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(in_channels, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                in_channels = v
        for n, (start, end) in enumerate(zip((0,) + SLICE_ENDS, SLICE_ENDS), 1):
            self.add_module(f"slice{n}", nn.Sequential(OrderedDict((str(i), layers[i]) for i in range(start, end))))

    def forward(self, x):
        features = []
        for block in self.children():
            x = block(x)
            features.append(x)
        return features


class NetLinLayer(nn.Module):
    """A calibrated 1x1 head weighting one layer's squared feature differences;
    the dropout in front is lpips's (index 0), so the conv's key is ``model.1``."""

    def __init__(self, channels):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1, stride=1, padding=0, bias=False))

    def forward(self, x):
        return self.model(x)


def normalize_tensor(features, eps=1e-10):
    """Unit length over channels, with lpips's eps. ``vector_norm`` rather than
    lpips's sqrt of a sum: the same value, but where a feature vector is all
    zero (a ReLU layer can give one, on a flat frame say) a finite gradient
    where lpips's sqrt gives NaN, which would poison a training step."""
    return features / (torch.linalg.vector_norm(features, dim=1, keepdim=True) + eps)


class LPIPS(nn.Module):
    """LPIPS v0.1, VGG16: per layer, the squared difference of unit-normalised
    features, weighted by its head and averaged over space, summed over the
    five layers. Frozen and always in eval mode (the heads' dropout served
    lpips's own calibration), but differentiable in its inputs."""

    def __init__(self):
        super().__init__()
        self.scaling_layer = ScalingLayer()
        self.net = VGG16()
        for i, channels in enumerate(CHANNELS):
            self.add_module(f"lin{i}", NetLinLayer(channels))
        self.requires_grad_(False).eval()

    @property
    def lins(self):
        return [getattr(self, f"lin{i}") for i in range(len(CHANNELS))]

    def train(self, mode=True):
        return super().train(False)

    def forward(self, x, y):
        """Distances ``(n,)`` between frames ``x`` and ``y`` ``(n, 3, H, W)`` in [-1, 1]."""
        features_x, features_y = self.net(self.scaling_layer(x)), self.net(self.scaling_layer(y))
        return sum(
            lin((normalize_tensor(fx) - normalize_tensor(fy)) ** 2).mean(dim=(1, 2, 3))
            for lin, fx, fy in zip(self.lins, features_x, features_y)
        )


def load_lpips(path) -> LPIPS:
    """An ``LPIPS`` holding the weights of a safetensors file written from
    ``lpips.LPIPS(net="vgg")`` (keys ``scaling_layer.*``, ``net.slice{1-5}.*``,
    ``lin{0-4}.model.1.weight``); anything else is refused, saying what to do."""
    header = open_safetensors(path, f"write it again with {CONVERSION}", pickled=f"convert it with {CONVERSION}", what="LPIPS weights")
    name, state = header.name, header.tensors()
    for i in range(len(CHANNELS)):
        alias, key = f"lins.{i}.model.1.weight", f"lin{i}.model.1.weight"
        if alias in state:
            head = state.pop(alias)
            if key in state and not torch.equal(state[key], head):
                raise WeightFileError(f"{name} holds two different weights for LPIPS head {i} ({key} and {alias}); lpips shares one: write the file again with {CONVERSION}")
            state.setdefault(key, head)
    model = LPIPS()
    problems = state_problems(model.state_dict(), state)
    if problems:
        raise WeightFileError(
            f"{name} is not LPIPS v0.1 with the VGG16 trunk: {', '.join(problems)}. "
            f"It must hold the whole lpips.LPIPS(net='vgg') (trunk and heads, not lpips's weights/v0.1/vgg.pth heads alone, nor net='alex' or 'squeeze'): write it with {CONVERSION}"
        )
    model.load_state_dict(state)
    return model
