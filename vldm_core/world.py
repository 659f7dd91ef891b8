"""The synthetic world the bundled small Video LDM learns: coloured shapes
bouncing over a plain background, with captions that name them.

A scene is fixed by a seed: one to three objects, each a circle, square or
triangle (axis-aligned, the triangle pointing up) in its own palette colour,
with a size, a start and a constant velocity, over a dark background with a
gentle fixed gradient. Everything is measured in fractions of the frame and
positions are exact functions of continuous time (bounces are folded, not
simulated), so a scene rendered at any size, fps, start or length shows the
same motion. Each object moves in its own lane (a stripe of the frame), so
objects never overlap and every frame shows every shape whole: what
``vldm_core.metrics.world`` measures is then known exactly.

Frames are drawn from signed distance functions with a one-pixel linear edge
(anti-aliased, pure torch, vectorised over frames and pixels): thousands of
small clips render in seconds on a CPU.
"""

import hashlib
import math
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import torch
from einops import rearrange

from .train.data import as_size, sample_generator
from .video_io import write_video

# Saturated and far apart (RGB distances of 125 levels or more between any two,
# 155 or more from every background), so a colour is recognised by distance
# alone, and a pixel mixing two of them at an edge is near neither, nor a third.
PALETTE = {
    "red": (225, 45, 45),
    "green": (45, 200, 70),
    "blue": (50, 90, 235),
    "yellow": (240, 220, 40),
    "magenta": (220, 60, 215),
    "cyan": (40, 215, 225),
    "white": (240, 240, 240),
}
SHAPES = ("circle", "square", "triangle")
BACKGROUNDS = ((16, 16, 20), (44, 44, 48), (20, 26, 48), (48, 36, 28), (26, 42, 34))
MAX_OBJECTS = 3
SIZE_RANGE = (0.2, 0.3)  # side of an object's bounding box, of the frame: 6 px or more at 32x32
SPEED_RANGE = (0.15, 0.4)  # frames per second: 1 to 3 px a frame at 64x64 and 8 fps
MAX_GRADIENT = 0.08  # brightness change across the frame, in [-1, 1] units
SCENE_SECONDS = 60.0  # clips start anywhere in this span (the motion goes on for ever)
EDGE = 1.0  # width of the anti-aliased edge, in pixels


@dataclass(frozen=True)
class Mover:
    """One object: its centre starts at ``start`` and moves at ``velocity`` (per
    second), reflected at the walls of ``bounds`` ``((x low, x high), (y low,
    y high))``, the part of its lane its centre can reach. Units: the frame."""

    colour: str
    shape: str
    size: float
    start: tuple
    velocity: tuple
    bounds: tuple


@dataclass(frozen=True)
class ObjectState:
    """Where an object is in one frame: centre ``(x, y)`` and bounding-box side
    ``size``, in fractions of the frame (x to the right, y down)."""

    colour: str
    shape: str
    centre: tuple
    size: float


# --- geometry -----------------------------------------------------------------


def fold(position, low, high):
    """Where a point moving freely to ``position`` is when it bounces between
    ``low`` and ``high``: reflection is a fold of period twice the range."""
    span = high - low
    return low + span - (torch.remainder(position - low, 2 * span) - span).abs()


def unit_sdf(shape, u, v):
    """Signed distance to ``shape`` drawn in the box [-1, 1]^2 (v down), in units
    of the box's half side; negative inside. Polygons take the largest distance
    to their edges' lines, exact near the edges and keeping corners sharp."""
    if shape == "circle":
        return torch.sqrt(u * u + v * v) - 1
    if shape == "square":
        return torch.maximum(u.abs(), v.abs()) - 1
    if shape == "triangle":  # apex (0, -1), base from (-1, 1) to (1, 1)
        return torch.maximum(v - 1, (2 * u.abs() - v - 1) / math.sqrt(5))
    raise ValueError(f"unknown shape {shape!r}: one of {', '.join(SHAPES)}")


def pixel_centres(height, width):
    """Pixel centres in fractions of the frame: ``x (width,)``, ``y (height,)``."""
    return (torch.arange(width) + 0.5) / width, (torch.arange(height) + 0.5) / height


def coverage(shape, u, v, scale):
    """How much of each pixel ``shape`` covers, in [0, 1]: a linear ramp one
    pixel wide across the edge. ``u, v``: the pixels' centres in the shape's
    box [-1, 1]^2; ``scale``: pixels per box unit (the smaller half side)."""
    return (0.5 - unit_sdf(shape, u, v) * scale / EDGE).clamp(0, 1)


def to_unit_rgb(rgb):
    """An 8-bit colour as a ``(3,)`` tensor in [-1, 1]."""
    return torch.tensor(rgb, dtype=torch.float32) / 127.5 - 1


def frame_times(frames, fps, start=0.0):
    """The times (seconds, float64) of ``frames`` frames at ``fps`` from ``start``."""
    return start + torch.arange(frames, dtype=torch.float64) / float(fps)


# --- captions -----------------------------------------------------------------


def caption(objects):
    """``[(colour, shape)]`` -> "a red circle, a blue square and a green triangle"."""
    names = [f"a {colour} {shape}" for colour, shape in objects]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


OBJECT_PATTERN = re.compile(rf"\b({'|'.join(PALETTE)})\s+({'|'.join(SHAPES)})\b")


def parse_caption(text):
    """The ``(colour, shape)`` objects a caption names, in order: the inverse of
    ``caption``, tolerant of case, spacing and surrounding words."""
    return OBJECT_PATTERN.findall(text.lower())


# --- scenes -------------------------------------------------------------------


def uniform(generator, low, high):
    return low + (high - low) * float(torch.rand((), generator=generator, dtype=torch.float64))


def draw_mover(generator, colour, shape, lane, lanes, axis):
    """An object in lane ``lane`` of ``lanes`` stripes across ``axis`` (0: the
    stripes split x, 1: y). Its speed across the lane is scaled by the lane's
    share of the room, so it bounces off the lane's sides no more often than
    off the frame's ends."""
    size = uniform(generator, *SIZE_RANGE)
    half = size / 2
    bounds = [(half, 1 - half), (half, 1 - half)]
    bounds[axis] = (lane / lanes + half, (lane + 1) / lanes - half)
    start = tuple(uniform(generator, low, high) for low, high in bounds)
    speed, angle = uniform(generator, *SPEED_RANGE), uniform(generator, 0, 2 * math.pi)
    velocity = [speed * math.cos(angle), speed * math.sin(angle)]
    velocity[axis] *= (bounds[axis][1] - bounds[axis][0]) / (1 - size)
    return Mover(colour, shape, size, start, tuple(velocity), tuple(bounds))


@dataclass(frozen=True)
class World:
    """A scene: its objects (in caption order), the background colour and the
    background's gradient ``(along x, along y)`` across the frame."""

    movers: tuple
    background: tuple
    gradient: tuple

    @classmethod
    def from_seed(cls, seed):
        """The scene of ``seed``: the same on every machine and torch version
        that keeps ``torch.rand``'s stream."""
        generator = torch.Generator().manual_seed(int(seed))
        count = int(torch.randint(1, MAX_OBJECTS + 1, (), generator=generator))
        colours = [list(PALETTE)[k] for k in torch.randperm(len(PALETTE), generator=generator)[:count].tolist()]
        shapes = [SHAPES[k] for k in torch.randint(len(SHAPES), (count,), generator=generator).tolist()]
        axis = int(torch.randint(2, (), generator=generator))
        lanes = torch.randperm(count, generator=generator).tolist()  # caption order says nothing of place
        movers = tuple(draw_mover(generator, colour, shape, lane, count, axis) for colour, shape, lane in zip(colours, shapes, lanes))
        background = BACKGROUNDS[int(torch.randint(len(BACKGROUNDS), (), generator=generator))]
        strength, angle = uniform(generator, 0, MAX_GRADIENT), uniform(generator, 0, 2 * math.pi)
        return cls(movers, background, (strength * math.cos(angle), strength * math.sin(angle)))

    @property
    def objects(self):
        return [(m.colour, m.shape) for m in self.movers]

    @property
    def caption(self):
        return caption(self.objects)

    def centres(self, times):
        """Centres ``(T, objects, 2)`` (float64, fractions of the frame) at
        ``times`` in seconds."""
        times = torch.as_tensor(times, dtype=torch.float64)
        return torch.stack([
            torch.stack([fold(m.start[axis] + m.velocity[axis] * times, *m.bounds[axis]) for axis in (0, 1)], dim=-1)
            for m in self.movers
        ], dim=1)

    def states(self, times):
        """Ground truth per frame: ``[[ObjectState per object] per time]``."""
        return [[ObjectState(m.colour, m.shape, tuple(centre), m.size) for m, centre in zip(self.movers, frame)]
                for frame in self.centres(times).tolist()]

    def backdrop(self, height, width):
        """The background ``(3, H, W)`` in [-1, 1]: a colour plus a brightness ramp."""
        x, y = pixel_centres(height, width)
        ramp = self.gradient[0] * (x[None, :] - 0.5) + self.gradient[1] * (y[:, None] - 0.5)
        return to_unit_rgb(self.background)[:, None, None] + ramp

    def render(self, times, size):
        """Frames ``(T, 3, H, W)`` in [-1, 1] at ``times`` (seconds), ``size`` an
        int or ``(height, width)``; a non-square frame stretches the scene."""
        height, width = as_size(size)
        centres = self.centres(times).float()
        x, y = pixel_centres(height, width)
        frames = self.backdrop(height, width).expand(centres.shape[0], -1, -1, -1)
        for k, mover in enumerate(self.movers):
            half = mover.size / 2
            u = (x[None, None, :] - centres[:, k, 0, None, None]) / half
            v = (y[None, :, None] - centres[:, k, 1, None, None]) / half
            alpha = coverage(mover.shape, u, v, half * min(height, width))
            frames = frames + rearrange(alpha, "t h w -> t 1 h w") * (to_unit_rgb(PALETTE[mover.colour])[:, None, None] - frames)
        return frames.clamp(-1, 1).contiguous()

    def clip(self, frames, fps, size, start=0.0):
        """``frames`` frames at ``fps`` from ``start`` seconds on."""
        return self.render(frame_times(frames, fps, start), size)


def scene_seed(seed, index):
    """The seed of scene ``index`` of a dataset seeded ``seed``: a hash, so that
    datasets with neighbouring seeds share no scenes."""
    return int.from_bytes(hashlib.sha256(f"world:{seed}:{index}".encode()).digest()[:8], "little") >> 1


# --- training data --------------------------------------------------------------


class WorldClips(torch.utils.data.Dataset):
    """``count`` scenes as training samples in ``VideoClips``' format:
    ``{"pixels": (frames, 3, H, W) in [-1, 1], "caption": str}``. Sample
    ``index`` always shows scene ``index`` (fixed by ``(seed, index)``); its
    start time in ``[0, seconds)`` is drawn from ``(seed, epoch, index)``, so
    each epoch sees other moments of the same scenes. ``frames=1`` gives
    images, for the image model."""

    def __init__(self, count, frames, fps, size, seed=0, seconds=SCENE_SECONDS):
        if count < 1 or frames < 1 or fps <= 0:
            raise ValueError(f"need at least 1 scene and 1 frame at a positive fps, not {count} scenes of {frames} frames at {fps} fps")
        self.count, self.frames, self.fps, self.size = int(count), int(frames), fps, as_size(size)
        self.seed, self.seconds = int(seed), float(seconds)
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def __len__(self):
        return self.count

    def world(self, index):
        return World.from_seed(scene_seed(self.seed, index))

    def start(self, index):
        """The start time (seconds) of sample ``index`` in this epoch."""
        return self.seconds * float(torch.rand((), generator=sample_generator(self.seed, self.epoch, index), dtype=torch.float64))

    def __getitem__(self, index):
        if not 0 <= index < self.count:
            raise IndexError(f"scene {index} of {self.count}")
        world = self.world(index)
        return {"pixels": world.clip(self.frames, self.fps, self.size, self.start(index)), "caption": world.caption}


def write_videos(folder, count, seconds, fps, size, seed=0, chunk=64):
    """Scenes 0..count-1 of ``WorldClips(..., seed=seed)``, from time 0, as
    ``world_00000.mp4`` with captions in ``world_00000.txt``: for the pack's
    ordinary video-folder training. H.264 at qp 0 in 4:4:4 (no chroma
    subsampling), so colours and edges survive to within rounding. Frames are
    rendered ``chunk`` at a time. Returns the video paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    height, width = as_size(size)
    frames, rate = round(seconds * fps), float(Fraction(fps).limit_denominator(1001))  # the stream's rate, exactly
    paths = []
    for index in range(count):
        world = World.from_seed(scene_seed(seed, index))
        path = folder / f"world_{index:05d}.mp4"
        times = (torch.arange(first, min(first + chunk, frames), dtype=torch.float64) / rate for first in range(0, frames, chunk))
        write_video(path, (world.render(t, (height, width)) for t in times), fps, lossless=True)
        path.with_suffix(".txt").write_text(world.caption + "\n", encoding="utf-8")
        paths.append(path)
    return paths
