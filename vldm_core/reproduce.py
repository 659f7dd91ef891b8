"""The paper's central claims at small scale, measured on a model bundle with
the synthetic world's exact metrics (vldm_core.metrics.world):

1. temporal fine-tuning aligns independently sampled frames into a coherent
   clip (image model frame by frame vs the key-frame model, same noise);
2. the temporal decoder removes flicker (image decoder vs temporal decoder on
   the same latents: the world's own clips, encoded, and generated videos);
3. context guidance keeps long rollouts stable (prediction with s = 1 vs s > 1,
   scored on the 1st, 4th, 16th and last segment of a ``settings.seconds`` video);
4. interpolation makes motion smooth (key frames held 4x vs interpolated 4x,
   both at the interpolated frame rate);
5. the temporal upscaler is steadier than upscaling frame by frame (the
   world's clips, 4x smaller, upscaled back).

Every row is a mean over the same prompts and seeds: the captions of held-out
scenes of the world. ``python -m vldm_core reproduce`` prints the table.
"""

import math
from collections import Counter
from dataclasses import dataclass, replace

import torch

from .autoencoder import scaled_encoder
from .metrics.world import detect, identities, score, segment, tracks
from .pipeline import Settings, decode, first_window, patched, plan, upscale
from .masking import keys_per_window
from .rollout import interpolate, predict_segments
from .sampling import Denoiser, window_sampler
from .world import MAX_OBJECTS, World, parse_caption, scene_seed

HELD_OUT_SEED = 12345  # scenes of a dataset seed no training config uses


def horizons(segments):
    """The rollout segments scored in a rollout of ``segments``: the early ones it reaches, and its last."""
    return tuple(h for h in (1, 4, 16) if h < segments) + (max(1, segments),)


@dataclass
class Row:
    variant: str
    values: dict  # metric name -> mean over videos


@dataclass
class Table:
    """Rows of one claim share their metric columns."""

    claim: str
    columns: tuple
    rows: list

    def markdown(self):
        lines = [f"| {self.claim} | " + " | ".join(self.columns) + " |", "|---" * (len(self.columns) + 1) + "|"]
        for row in self.rows:
            lines.append(f"| {row.variant} | " + " | ".join(number(row.values[c]) for c in self.columns) + " |")
        return "\n".join(lines)


def number(value):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.3g}"


def mean_rows(per_video):
    """``per_video``: one ``{variant: {metric: value}}`` per video -> Rows of the means (nan-aware)."""
    rows = []
    for variant in per_video[0]:
        values = {}
        for metric in per_video[0][variant]:
            numbers = torch.tensor([float("nan") if v[variant][metric] is None else v[variant][metric] for v in per_video], dtype=torch.float64)
            values[metric] = float(numbers.nanmean()) if not numbers.isnan().all() else float("nan")
        rows.append(Row(variant, values))
    return rows


def world_scores(video, caption, fps):
    """The world metrics of a pixel video at ``fps`` (acceleration per frame squared: compare videos of one frame rate)."""
    s = score(video, caption, fps)
    return {
        "identity": s.identity_consistency,
        "colours": s.colour_consistency,
        "caption": s.caption_agreement,
        "acceleration": s.acceleration,
        "teleports": s.teleports,
        "flicker": s.background_flicker,
    }


def motion_evenness(video):
    """How evenly each object's motion is spread over the frames: (mean speed)^2
    / mean(speed^2) of its centroid, frame to frame, averaged over objects: 1
    when every frame moves it equally far (a bounce keeps the speed), 1/4 when
    all of its motion happens in every 4th frame (key frames held 4x), about
    pi/4 for pure jitter; nan when nothing moves."""
    centres = tracks(detect(video))
    evenness = []
    for speeds in torch.linalg.vector_norm(centres[:, 1:] - centres[:, :-1], dim=-1):
        speeds = speeds[~speeds.isnan()]
        if len(speeds) > 1 and speeds.pow(2).mean() > 0:
            evenness.append(float(speeds.mean() ** 2 / speeds.pow(2).mean()))
    return sum(evenness) / len(evenness) if evenness else float("nan")


def temporal_error(video, truth):
    """Mean absolute error of the frame-to-frame change: how far a video's motion and flicker are from the truth's."""
    return float(((video[1:] - video[:-1]) - (truth[1:] - truth[:-1])).abs().mean())


def psnr(video, truth):
    mse = float(((video - truth) / 2).pow(2).mean())  # [-1, 1] -> [0, 1]
    return 10 * math.log10(1 / max(mse, 1e-12))


def held_out_scenes(videos):
    return [World.from_seed(scene_seed(HELD_OUT_SEED, i)) for i in range(videos)]


class Reproduction:
    """A model and its settings, with the few ways the claims sample and decode it."""

    def __init__(self, model, settings=Settings(), progress=None):
        self.model, self.settings = model, settings
        self.no_text = model.text_encoder([""])
        self.progress = progress or (lambda: None)

    def text(self, prompt):
        return self.model.text_encoder([prompt])

    def decode(self, latents, temporal=False):
        """Latents -> pixels, with the image decoder or the bundle's temporal decoder."""
        return decode(self.model.autoencoder, self.model.temporal_decoder if temporal else None, self.settings, latents)

    def encode(self, pixels):
        return scaled_encoder(self.model.autoencoder.module, self.model.autoencoder.scale)(pixels)

    def key_frames(self, prompt, seed, layers):
        """The key-frame window from ``seed``'s noise, with ``layers`` (None: the image model, each frame on its own)."""
        latents = first_window(self.model, layers, self.model.keyframe.train_frames, seed, self.settings, self.text(prompt), self.no_text)
        self.progress()
        return latents

    def sampler(self, prompt, seed, context_scale):
        s = self.settings
        denoiser = Denoiser(self.model.unet, self.model.prediction_type)
        return window_sampler(denoiser, self.text(prompt), self.no_text, s.steps, s.cfg, context_scale, seed, self.model.device)


def background_colour(video):
    """Mean colour ``(3,)`` of a video's background pixels (vldm_core.metrics.world's segmentation)."""
    still = segment(video)[1]
    return torch.stack([video[:, c][still].mean() for c in range(3)])


def colour_sets(video):
    """Each frame's objects' colours, as a sorted tuple (colours are unique in the world: one per object)."""
    return [tuple(sorted(d.colour for d in found)) for found in detect(video)]


def caption_colours(video, caption):
    """Share of frames whose objects have exactly the caption's colours, whatever their shapes."""
    named = tuple(sorted(colour for colour, _ in parse_caption(caption)))
    return sum(c == named for c in colour_sets(video)) / len(video)


def rollout_scores(frames, caption, first_colours, first_background, fps):
    """One rollout segment's pixels, after the frame before it: do its frames
    still show the first window's objects (by colour: a shape misread in a
    small soft frame is not drift) and the caption's, how far has its
    background drifted in colour, and do objects jump (into it or inside it)?"""
    segment = frames[1:]
    return {
        "colours kept": sum(c == first_colours for c in colour_sets(segment)) / len(segment),
        "caption colours": caption_colours(segment, caption),
        "background drift": float((background_colour(segment) - first_background).abs().mean()),
        "teleports": score(frames, fps=fps).teleports,
    }


def by_object_count(video, caption):
    """Caption colours, caption agreement and swapped shapes filed under the
    caption's number of objects (None under the others): where colours are
    right and shapes are not, the model has not bound each shape to its
    colour; swapped: the frame shows the caption's colours and its shapes,
    on the wrong objects."""
    named = tuple(sorted(parse_caption(caption)))
    count = len(named)
    colours = lambda objects: sorted(c for c, _ in objects)  # noqa: E731
    shapes = lambda objects: sorted(s for _, s in objects)  # noqa: E731
    frames = [identities(found) for found in detect(video)]
    right_colours = [colours(f) == colours(named) for f in frames]
    scores = {
        "caption colours": sum(right_colours) / len(frames),
        "caption": sum(f == named for f in frames) / len(frames),
        "shapes swapped": sum(ok and f != named and shapes(f) == shapes(named) for ok, f in zip(right_colours, frames)) / len(frames),
    }
    return {
        f"{metric}, {n} object{'s' * (n > 1)}": value if n == count else None
        for metric, value in scores.items() for n in range(1 + (metric == "shapes swapped"), MAX_OBJECTS + 1)
    }


def measure_scene(run, scene, index):
    """Every claim's variants for one held-out scene: ``{claim: {variant: {metric: value}}}``."""
    model, settings, caption = run.model, run.settings, scene.caption
    key_rate, rate = model.key_frame_rate, model.key_frame_rate * 4
    size = model.frame_size
    results = {}

    keys = run.key_frames(caption, index, model.keyframe)
    frame_by_frame = run.decode(run.key_frames(caption, index, None)).cpu()
    first = run.decode(keys).cpu()
    results["key frames"] = {
        "world (ground truth)": world_scores(scene.clip(keys.shape[0], key_rate, size), caption, key_rate),
        "image LDM, frame by frame": world_scores(frame_by_frame, caption, key_rate),
        "Video LDM key frames": world_scores(first, caption, key_rate),
    }
    results["objects"] = {"image LDM, frame by frame": by_object_count(frame_by_frame, caption), "Video LDM key frames": by_object_count(first, caption)}

    window, context = model.prediction.train_frames, settings.context_frames
    new, scored = window - context, horizons(plan(model, settings).segments)
    first_colours, first_background = Counter(colour_sets(first)).most_common(1)[0][0], background_colour(first)
    results["rollout"] = {}
    for scale, label in ((1.0, "s = 1 (no context guidance)"), (settings.context_scale, f"s = {settings.context_scale:g}")):
        sampler = run.sampler(caption, index + 1, scale)
        with patched(model.unet, model.prediction):
            video = predict_segments(keys, scored[-1], window, context, sampler, stage=model.prediction.config.stage_flag(0))
        run.progress()
        for horizon in scored:
            start = keys.shape[0] + (horizon - 1) * new
            frames = run.decode(video[start - 1 : start + new]).cpu()
            results["rollout"][f"{label}, segment {horizon}"] = rollout_scores(frames, caption, first_colours, first_background, key_rate)

    with patched(model.unet, model.interpolation):
        dense = interpolate(keys, keys_per_window(model.interpolation.train_frames), run.sampler(caption, index + 2, settings.context_scale), stage=model.interpolation.config.stage_flag(0))
    run.progress()
    held = keys.repeat_interleave(4, dim=0)[: dense.shape[0]]
    interpolated = {False: run.decode(dense).cpu(), True: run.decode(dense, temporal=True).cpu()}  # by the image and the temporal decoder
    results["interpolation"] = {
        name: {**world_scores(video, caption, rate), "motion evenness": motion_evenness(video)}
        for name, video in (("world (ground truth)", scene.clip(dense.shape[0], rate, size)), ("key frames held 4x", run.decode(held).cpu()), ("4x interpolated", interpolated[False]))
    }

    truth = scene.clip(2 * model.temporal_decoder.train_frames, rate, size)
    encoded = run.encode(truth.to(model.device))
    results["decoder"] = {}
    for name, temporal in (("image decoder", False), ("temporal decoder", True)):
        video = run.decode(encoded, temporal).cpu()
        results["decoder"][name] = {
            "psnr (world clips)": psnr(video, truth),
            "temporal error (world clips)": temporal_error(video, truth),
            "flicker (world clips)": world_scores(video, caption, rate)["flicker"],
            "flicker (generated)": world_scores(interpolated[temporal], caption, rate)["flicker"],
        }
    run.progress()

    upscaler = model.upscaler
    if upscaler is not None:
        high = scene.clip(2 * upscaler.layers.train_frames, rate, tuple(4 * side for side in size))
        low = torch.nn.functional.interpolate(high, size=size, mode="area")
        results["upscaler"] = {}
        for name, variant in (("frame by frame", replace(upscaler, layers=None)), ("temporal upscaler", upscaler)):
            video = upscale(variant, settings, model.text_encoder, caption, low, lambda *_: None).cpu()
            results["upscaler"][name] = {"psnr": psnr(video, high), "temporal error": temporal_error(video, high), "flicker": world_scores(video, caption, rate)["flicker"]}
        run.progress()
    return results


TITLES = {
    "key frames": "1. key frames, {key_rate:g} fps: temporal layers align frames",
    "objects": "1b. key frames by number of objects: colours right, shapes wrong?",
    "decoder": "2. decoding, {rate:g} fps: the temporal decoder removes flicker",
    "rollout": "3. rollout: context guidance keeps long videos stable",
    "interpolation": "4. motion at {rate:g} fps: interpolation smooths it",
    "upscaler": "5. 4x upscaling, {rate:g} fps: temporal layers steady it",
}


def ticks_per_scene(model):
    """Progress ticks of one measure_scene: two key-frame windows, two rollouts, interpolation, decoding, upscaling."""
    return 6 + (model.upscaler is not None)


@torch.no_grad()
def reproduce(model, videos=8, settings=Settings(), progress=None):
    """Tables of every claim, means over ``videos`` held-out scenes."""
    run = Reproduction(model, settings, progress)
    per_video = [measure_scene(run, scene, i) for i, scene in enumerate(held_out_scenes(videos))]
    rates = {"key_rate": model.key_frame_rate, "rate": 4 * model.key_frame_rate}
    tables = []
    for claim in TITLES:
        if claim not in per_video[0]:
            continue
        rows = mean_rows([v[claim] for v in per_video])
        tables.append(Table(TITLES[claim].format(**rates), tuple(rows[0].values), rows))
    return tables
