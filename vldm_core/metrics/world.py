"""Exact metrics for videos of the synthetic world (``vldm_core.world``),
generated ones included: do the right objects stay themselves, move smoothly,
over a background that holds still?

Each frame is segmented by palette colour: a pixel belongs to the palette
colour nearest to it if it lies within ``TOLERANCE`` of it. Connected
components of one colour with at least ``MIN_AREA`` pixels are objects. Their
anti-aliased edges are unblended (each pixel's opacity: its place between the
colour and the frame's background), and each shape is fitted to the opacities
by their moments and drawn as the world draws it; the best fit names the shape
(``"unknown"`` below ``MIN_SHAPE_FIT``) and gives centre and size to a small
fraction of a pixel. The world's colours are far apart and its objects never
overlap, so its own renders score exactly (consistency 1, flicker 0,
acceleration about 1e-3 at 32x32 from pixel sampling alone); the tolerances
leave room for a generator's colour drift, blur and noise.

Units: positions in fractions of the frame, pixel values in [-1, 1] (one
8-bit level is 1 / 127.5).
"""

from collections import Counter
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..world import EDGE, PALETTE, SHAPES, SIZE_RANGE, SPEED_RANGE, coverage, parse_caption, to_unit_rgb

COLOURS = tuple(PALETTE)
# RGB distance in [-1, 1] units (~51 of 255 levels). The closest any mix of two
# world colours (or a colour and a background) comes to a third colour is ~89
# levels, so anti-aliased edges are never taken for another object; a
# generated colour may drift this far and still count.
TOLERANCE = 0.4
# A quarter of the smallest object's area (a triangle of the smallest size):
# specks of colour in a generated frame are not objects, eroded objects still are.
MIN_AREA = 0.25 * 0.5 * SIZE_RANGE[0] ** 2
MIN_SHAPE_FIT = 0.5  # below this a blob is no shape; ground-truth shapes fit above 0.9 at 32x32
KEPT = 0.75  # share of the smallest second differences averaged (the rest: bounces, detection slips)
TELEPORT = 3.0  # a centroid step this many times the world's fastest motion is no motion the world makes
HALO = 0.05  # foreground grown by this share of the short side (2 px at least) before the background is measured

# Each shape's centroid offset and variances in its box [-1, 1]^2 (v down): a
# box's half sides follow from a blob's variances, for each shape it may be.
MOMENTS = {  # shape: (mean v, variance of u, variance of v)
    "circle": (0.0, 1 / 4, 1 / 4),
    "square": (0.0, 1 / 3, 1 / 3),
    "triangle": (1 / 3, 1 / 6, 2 / 9),
}
EDGE_VARIANCE = EDGE ** 2 / 12  # what the anti-aliased edge adds, in pixels squared


@dataclass(frozen=True)
class Detection:
    """An object found in a frame, in fractions of the frame: its box's
    ``centre`` ``(x, y)`` and ``size`` ``(width, height)`` as the best-fitting
    shape draws it (comparable with ``vldm_core.world.ObjectState``), the
    ``centroid`` of its opacity and its ``area``; ``fit``: that shape's
    weighted IoU with it, in [0, 1]."""

    colour: str
    shape: str
    centre: tuple
    size: tuple
    centroid: tuple
    area: float
    fit: float


@dataclass(frozen=True)
class WorldScores:
    """``identity_consistency``: share of frames whose objects (a multiset of
    ``(colour, shape)``) are the video's most common ones, ``objects``.
    ``colour_consistency``: the same for the objects' colours alone (a shape
    misread in a soft, small frame does not count against it).
    ``caption_agreement``: share of frames whose objects are the caption's
    (None without a caption). ``acceleration``: trimmed mean size of the
    objects' centroid second differences, in fractions of the frame per frame
    squared (0 for constant velocity; it grows as 1 / fps^2, so compare videos
    of one fps; nan if no object is seen in three frames in a row).
    ``background_flicker``: mean absolute change, frame to frame, of pixels
    that are background in both frames (nan for a single frame).
    ``teleports``: share of consecutive frame pairs, over the objects seen in
    both, where an object's centroid moves more than ``TELEPORT`` times the
    world's fastest speed: it vanished here and appeared there (None without
    the video's frame rate, nan if no object is seen twice in a row)."""

    identity_consistency: float
    colour_consistency: float
    caption_agreement: float | None
    acceleration: float
    background_flicker: float
    objects: tuple
    teleports: float | None = None


# --- segmentation ---------------------------------------------------------------


def palette_labels(frame):
    """``(H, W)``: index into ``COLOURS`` of each pixel's nearest palette
    colour in ``frame (3, H, W)``, or -1 where none lies within ``TOLERANCE``."""
    palette = torch.stack([to_unit_rgb(rgb) for rgb in PALETTE.values()])
    squared = (  # |pixel - colour|^2, (colours, H, W), without a (colours, 3, H, W) difference
        frame.square().sum(dim=0) - 2 * torch.einsum("chw,kc->khw", frame, palette) + palette.square().sum(dim=1)[:, None, None]
    )
    nearest, index = squared.min(dim=0)
    return torch.where(nearest <= TOLERANCE ** 2, index, -1)


def background(labels):
    """``(H, W)``: pixels far from every object, given a frame's
    ``palette_labels``: the palette-coloured pixels grown by ``HALO`` (past
    anti-aliased edges and a generator's blur) are not."""
    radius = max(2, round(HALO * min(labels.shape[-2:])))
    return max_filter((labels >= 0).float(), radius) == 0


def max_filter(x, radius=1):
    """The largest value within ``radius`` (a square) of each pixel of ``x
    (..., H, W)``, zero beyond the border: shifted maxima, an order of
    magnitude faster on a CPU than ``max_pool2d`` with one channel."""
    for _ in range(radius):
        padded = F.pad(x, (1, 1, 1, 1))
        rows = torch.maximum(torch.maximum(padded[..., :-2, :], padded[..., 1:-1, :]), padded[..., 2:, :])
        x = torch.maximum(torch.maximum(rows[..., :-2], rows[..., 1:-1]), rows[..., 2:])
    return x


def label_components(masks):
    """8-connected components of boolean ``masks (N, H, W)``: each pixel gets
    the largest (1-based) pixel number in its component, 0 off the mask.
    Numbers spread to neighbours until nothing changes, as many rounds as the
    longest path through a component."""
    _, height, width = masks.shape
    inside = masks.float()
    labels = torch.arange(1, height * width + 1, dtype=torch.float32).view(height, width) * inside
    while True:
        spread = max_filter(labels) * inside
        if torch.equal(spread, labels):
            return labels.long()
        labels = spread


def frame_background(frame, still):
    """The background colour of ``frame (3, H, W)``: the median of its ``still``
    pixels, or mid-grey (far from every palette colour) if it has none."""
    if not still.any():
        return torch.zeros(3)
    return frame[:, still].median(dim=1).values


def opacity(frame, colour, backdrop, region):
    """How much of each pixel of ``region`` shows ``colour`` rather than
    ``backdrop``: its position along the line between them, in [0, 1]; this
    undoes the anti-aliased blend, so centres and sizes come out to a fraction
    of a pixel."""
    line = colour - backdrop
    along = torch.einsum("chw,c->hw", frame - backdrop[:, None, None], line) / line.dot(line).clamp_min(1e-6)
    return along.clamp(0, 1) * region


def moments(alpha):
    """Mass, centroid ``(x, y)`` and variances ``(x, y)`` of opacities
    ``alpha (H, W)``, in pixels."""
    height, width = alpha.shape
    x, y = torch.arange(width) + 0.5, torch.arange(height) + 0.5
    columns, rows = alpha.sum(0), alpha.sum(1)
    mass = alpha.sum()
    cx, cy = (columns * x).sum() / mass, (rows * y).sum() / mass
    return mass, (cx, cy), ((columns * (x - cx) ** 2).sum() / mass, (rows * (y - cy) ** 2).sum() / mass)


def fit(alpha, shape):
    """``shape`` drawn where opacities ``alpha (H, W)`` say it is: its box
    centre and half sides (pixels), from their centroid and variances, and
    how well it matches them (weighted IoU)."""
    mean_v, var_u, var_v = MOMENTS[shape]
    _, (cx, cy), (var_x, var_y) = moments(alpha)
    half_x = ((var_x - EDGE_VARIANCE).clamp_min(1e-3) / var_u).sqrt()
    half_y = ((var_y - EDGE_VARIANCE).clamp_min(1e-3) / var_v).sqrt()
    cy = cy - mean_v * half_y
    height, width = alpha.shape
    x, y = torch.arange(width) + 0.5, torch.arange(height) + 0.5
    ideal = coverage(shape, (x[None, :] - cx) / half_x, (y[:, None] - cy) / half_y, torch.minimum(half_x, half_y))
    overlap = torch.minimum(alpha, ideal).sum() / torch.maximum(alpha, ideal).sum()
    return (float(cx), float(cy)), (float(half_x), float(half_y)), float(overlap)


def describe(frame, mask, colour, backdrop, taken):
    """A ``Detection`` from one component's ``mask (H, W)``: opacities over the
    mask grown by a pixel (its anti-aliased edge), less pixels ``taken`` by
    other colours, and the shape that fits them best."""
    _, height, width = frame.shape
    grown = max_filter(mask.float()) > 0
    alpha = opacity(frame, to_unit_rgb(PALETTE[colour]), backdrop, (grown & ~taken) | mask)
    fits = {shape: fit(alpha, shape) for shape in SHAPES}
    shape = max(fits, key=lambda name: fits[name][2])
    (cx, cy), (half_x, half_y), overlap = fits[shape]
    mass, (mx, my), _ = moments(alpha)
    return Detection(
        colour=colour,
        shape=shape if overlap >= MIN_SHAPE_FIT else "unknown",
        centre=(cx / width, cy / height),
        size=(2 * half_x / width, 2 * half_y / height),
        centroid=(float(mx) / width, float(my) / height),
        area=float(mass) / (height * width),
        fit=overlap,
    )


def segment(video):
    """``palette_labels`` and ``background`` of each frame, ``(T, H, W)`` each.
    Frame by frame, as all the measuring is: memory stays bounded for long
    videos, and one frame's tensors are too small for torch's thread pool,
    which on a busy CPU costs far more than it saves here."""
    labels = [palette_labels(frame) for frame in video]
    return torch.stack(labels), torch.stack([background(frame_labels) for frame_labels in labels])


def detect(video):
    """The objects in each frame of ``video (T, 3, H, W)`` in [-1, 1]:
    ``[[Detection] per frame]``, by colour, then largest first."""
    video = video.detach().float().cpu()
    return [objects_in(*frame) for frame in zip(video, *segment(video))]


def objects_in(frame, labels, still):
    """The objects in ``frame (3, H, W)`` given its ``palette_labels`` and
    ``background``."""
    _, height, width = frame.shape
    colours = labels[labels >= 0].unique()
    components = label_components(labels[None] == colours[:, None, None])
    backdrop = frame_background(frame, still)
    found = []
    for c, numbers in zip(colours.tolist(), components):
        taken = (labels >= 0) & (labels != c)
        ids, areas = numbers.unique(return_counts=True)
        found += [describe(frame, numbers == k, COLOURS[c], backdrop, taken)
                  for k, area in zip(ids.tolist(), areas.tolist()) if k > 0 and area >= MIN_AREA * height * width]
    return sorted(found, key=lambda d: (d.colour, -d.area))


# --- scores -------------------------------------------------------------------


def identities(detections):
    """A frame's objects as a sorted tuple of ``(colour, shape)`` (a multiset)."""
    return tuple(sorted((d.colour, d.shape) for d in detections))


def tracks(found):
    """Per colour, the centroid ``(T, 2)`` of its largest object in each frame
    (nan where it has none): colours are unique in the world, so colour
    identifies an object even in frames where its shape is misread."""
    centres = torch.full((len(COLOURS), len(found), 2), float("nan"), dtype=torch.float64)
    for t, detections in enumerate(found):
        for d in reversed(detections):  # the largest of a colour is written last
            centres[COLOURS.index(d.colour), t] = torch.tensor(d.centroid, dtype=torch.float64)
    return centres


def trimmed_acceleration(centres):
    """Mean of the smallest ``KEPT`` share of second-difference sizes over all
    tracks, where a track is seen in three frames in a row. A bounce bends a
    path in one or two frames of many and a lost detection in a few, so they
    fall in the discarded tail; a jittering or shuffled path is large throughout."""
    second = centres[:, 2:] - 2 * centres[:, 1:-1] + centres[:, :-2]
    sizes = torch.linalg.vector_norm(second, dim=-1).flatten()
    sizes = sizes[~sizes.isnan()].sort().values
    if not len(sizes):
        return float("nan")
    return float(sizes[:max(1, round(KEPT * len(sizes)))].mean())


def teleport_rate(centres, fps):
    """Share of the frame-to-frame centroid steps of ``centres`` (tracks) longer
    than ``TELEPORT`` times the world's largest speed at ``fps``. The world's
    objects move at most ``SPEED_RANGE[1]`` frames a second and bounce without
    losing speed, so a longer step is a jump, never motion."""
    steps = torch.linalg.vector_norm(centres[:, 1:] - centres[:, :-1], dim=-1).flatten()
    steps = steps[~steps.isnan()]
    if not len(steps):
        return float("nan")
    return float((steps > TELEPORT * SPEED_RANGE[1] / fps).double().mean())


def flicker(video, still):
    """Mean absolute change (over channels) of pixels ``still`` (background)
    in two consecutive frames."""
    both = still[1:] & still[:-1]
    change = (video[1:] - video[:-1]).abs().mean(dim=1)
    return float(change[both].mean()) if both.any() else float("nan")


def score(video, caption=None, fps=None):
    """``WorldScores`` of ``video (T, 3, H, W)`` in [-1, 1], of its agreement
    with ``caption`` if one is given, and its teleports at ``fps`` if given."""
    video = video.detach().float().cpu()
    labels, still = segment(video)
    found = [objects_in(*frame) for frame in zip(video, labels, still)]
    per_frame = [identities(detections) for detections in found]
    common = Counter(per_frame).most_common(1)[0][0]
    centres = tracks(found)
    colours = [tuple(colour for colour, _ in objects) for objects in per_frame]
    named = tuple(sorted(parse_caption(caption))) if caption is not None else None
    return WorldScores(
        identity_consistency=sum(s == common for s in per_frame) / len(per_frame),
        colour_consistency=Counter(colours).most_common(1)[0][1] / len(colours),
        caption_agreement=sum(s == named for s in per_frame) / len(per_frame) if named is not None else None,
        acceleration=trimmed_acceleration(centres),
        background_flicker=flicker(video, still),
        objects=common,
        teleports=teleport_rate(centres, fps) if fps else None,
    )
