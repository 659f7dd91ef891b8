"""Training data: a folder of captioned videos, cut into random clips of T frames.

A run reads its videos with PyAV at the frame rate the model is trained for,
picks a random clip and a random crop per sample, and can encode those clips to
latents once (``LatentCache``) so that later runs skip the decoder and the VAE.

Two promises shape the code:

- A bad video never ends a run. Files that cannot be opened, and videos too
  short for a clip, are skipped at construction and counted by reason; a video
  that fails later (changed since it was probed) is counted and replaced by
  another one. Only a folder with nothing usable is an error, raised before any
  compute is spent, with the fix.
- Every random choice comes from a generator seeded by ``(seed, epoch, index)``,
  so sample ``index`` of epoch ``epoch`` is the same clip on any machine, in
  any DataLoader worker, before and after an interrupted run is resumed.
"""

import csv
import hashlib
import json
import math
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
from kornia.geometry.transform import resize
from safetensors import safe_open
from safetensors.torch import save_file

from ..file_checks import DataFileError, open_safetensors, read_json, read_text

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mov", ".mkv", ".avi", ".gif", ".m4v")
MANIFESTS = ("captions.csv", "captions.jsonl")
CAPTION_FIX = "save it again as UTF-8 text"
CACHE_FIX = "delete the cache folder and run LatentCache.encode_all (the trainer does on its next start)"
MAX_ATTEMPTS = 10  # videos tried in a row for one sample before giving up
UNREADABLE, TOO_SHORT, FAILED = "unreadable", "too short", "failed to read"


class VideoReadError(Exception):
    """A video that cannot be opened, has no video stream, or ends before a clip does."""


@dataclass(frozen=True)
class VideoItem:
    path: Path
    caption: str


@dataclass(frozen=True)
class VideoInfo:
    """What ``probe`` learns from a video's header and first frame. ``duration``
    is exact (a Fraction of seconds), so clip bounds need no tolerance."""

    duration: Fraction
    fps: Fraction
    height: int
    width: int

    @property
    def size(self):
        return self.height, self.width


# --- finding videos and captions -------------------------------------------


def find_videos(folder):
    """Every video file under ``folder`` (recursively), sorted by its path, with
    its caption: from the folder's manifest if it lists the file, else from a
    sidecar ``<stem>.txt``, else empty."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"the video folder {folder} does not exist or is not a folder")
    manifest = read_manifest(folder)
    paths = sorted((p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS), key=lambda p: relative_key(p, folder))
    return [VideoItem(path, caption_for(path, folder, manifest)) for path in paths]


def relative_key(path, folder):
    """A video's name inside its folder, with forward slashes: how manifests and
    the latent cache refer to it, on any OS and wherever the folder is moved."""
    return Path(path).relative_to(folder).as_posix()


def caption_for(path, folder, manifest):
    key = relative_key(path, folder)
    if key in manifest:
        return manifest[key]
    sidecar = path.with_suffix(".txt")
    return read_text(sidecar, CAPTION_FIX).strip() if sidecar.is_file() else ""


def read_manifest(folder):
    """``{relative file: caption}`` from the folder's ``captions.csv`` or
    ``captions.jsonl``; empty without one. Both at once is refused, since which
    one wins would be a guess."""
    present = [folder / name for name in MANIFESTS if (folder / name).is_file()]
    if len(present) > 1:
        raise DataFileError(f"{folder} has both captions.csv and captions.jsonl; keep one of them")
    if not present:
        return {}
    path = present[0]
    rows = read_csv_manifest(path) if path.suffix == ".csv" else read_jsonl_manifest(path)
    return {Path(os.path.normpath(file.replace("\\", "/"))).as_posix(): caption.strip() for file, caption in rows}


def read_csv_manifest(path):
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            if not {"file", "caption"} <= set(reader.fieldnames or ()):
                raise DataFileError(f"{path}: the first line must be the header 'file,caption', found {reader.fieldnames}")
            return [(row["file"], row["caption"] or "") for row in reader if row["file"]]
    except (UnicodeDecodeError, csv.Error) as error:
        raise DataFileError(f"{path} is not a UTF-8 CSV file ({error}): {CAPTION_FIX}") from None


def read_jsonl_manifest(path):
    rows = []
    for number, line in enumerate(read_text(path, CAPTION_FIX).splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            entry = None  # refused below, with the line
        if not (isinstance(entry, dict) and isinstance(entry.get("file"), str) and isinstance(entry.get("caption"), str)):
            raise DataFileError(f'{path}, line {number}: expected {{"file": "...", "caption": "..."}}, found {line[:60]!r}')
        rows.append((entry["file"], entry["caption"]))
    return rows


# --- decoding ---------------------------------------------------------------


def probe(path):
    """Duration, native fps and size of a video, from its header; the first frame
    is decoded too, so files that open but do not decode are caught here, at
    construction, rather than mid-run."""
    try:
        with av.open(str(path)) as container:
            stream = video_stream(container, path)
            first = next(container.decode(stream), None)
            if first is None:
                raise VideoReadError(f"{path}: no frame decodes")
            fps = Fraction(stream.average_rate or stream.guessed_rate or 0)
            return VideoInfo(stream_duration(container, stream, fps), fps, first.height, first.width)
    except (av.error.FFmpegError, OSError) as error:
        raise VideoReadError(f"{path}: {error}") from None


def video_stream(container, path):
    if not container.streams.video:
        raise VideoReadError(f"{path}: no video stream")
    return container.streams.video[0]


def stream_duration(container, stream, fps):
    """Seconds from the first frame to the end of the last. Containers disagree
    on where they keep it (mp4: the stream, webm/mkv: the container, some only
    a frame count), so the first one present wins."""
    if stream.duration:
        return Fraction(stream.duration) * stream.time_base
    if container.duration:
        start = Fraction(stream.start_time or 0) * stream.time_base
        return Fraction(container.duration, av.time_base) - start
    if stream.frames and fps:
        return stream.frames / fps
    raise VideoReadError("the video does not say how long it is")


def clip_span(frames, fps):
    """Seconds from a clip's first frame time to its last."""
    return Fraction(frames - 1) / Fraction(fps)


def clip_times(frames, fps, start):
    """The times a clip shows: ``start + k / fps``, exact."""
    return [Fraction(start) + Fraction(k) / Fraction(fps) for k in range(frames)]


def pick_frames(timed_frames, targets, tolerance=Fraction(0)):
    """For each target time the latest frame shown at or before it, from
    ``(time, end, frame)`` in presentation order; stops reading once the clip
    is complete. ``tolerance`` absorbs timestamps rounded by the container
    (webm keeps milliseconds: frame 2 of 30 fps is at 0.067 s, not 0.0667 s).
    Raises ``VideoReadError`` if the video ends (or starts) off the clip."""
    picked, latest = [], None
    for start, end, frame in timed_frames:
        while len(picked) < len(targets) and start > targets[len(picked)] + tolerance:
            if latest is None:
                raise SeekedPast(start)
            picked.append(latest[2])
        if len(picked) == len(targets):
            return picked
        latest = start, end, frame
    while latest is not None and len(picked) < len(targets) and targets[len(picked)] < latest[1]:
        picked.append(latest[2])
    if len(picked) < len(targets):
        shown = f"{float(latest[1]):.3f} s" if latest else "no frame"
        raise VideoReadError(f"the video ends at {shown}, before the clip's frame at {float(targets[len(picked)]):.3f} s")
    return picked


class SeekedPast(Exception):
    """The first frame after a seek lies after the clip's start (a container with
    an imprecise index): decode from the beginning instead."""


def timed_frames(container, stream):
    """``(time, end, frame)`` of each decoded frame, in seconds from the stream's
    start; a frame without a timestamp follows the one before it."""
    base = Fraction(stream.time_base)
    origin = stream.start_time or 0
    interval = 1 / Fraction(stream.average_rate) if stream.average_rate else Fraction(0)
    time = None
    for frame in container.decode(stream):
        time = (frame.pts - origin) * base if frame.pts is not None else (time + interval if time is not None else Fraction(0))
        length = frame.duration * base if frame.duration else interval
        yield time, time + length, frame


def read_clip(path, frames, fps, start=0):
    """``frames`` frames at ``fps`` from ``start`` seconds on, as uint8
    ``(frames, H, W, 3)``: frame k is the one shown at ``start + k / fps``
    (a 30 fps video read at 7.5 fps gives every 4th frame). Seeks to the
    keyframe before ``start`` and decodes forward only as far as the clip."""
    targets = clip_times(frames, fps, start)
    try:
        try:
            return decode_clip(path, targets, seek=start > 0)
        except SeekedPast:
            return decode_clip(path, targets, seek=False)
    except (av.error.FFmpegError, OSError, SeekedPast) as error:
        raise VideoReadError(f"{path}: {error}") from None


def decode_clip(path, targets, seek):
    with av.open(str(path)) as container:
        stream = video_stream(container, path)
        if seek:
            container.seek((stream.start_time or 0) + int(targets[0] / stream.time_base), stream=stream, backward=True)
        frames = timed_frames(container, stream)
        try:
            picked = pick_frames(frames if seek else shown_from_zero(frames), targets, Fraction(stream.time_base) / 2)
        except VideoReadError as error:
            raise VideoReadError(f"{path}: {error}") from None
        return torch.from_numpy(np.stack([frame.to_ndarray(format="rgb24") for frame in picked]))


def shown_from_zero(timed):
    """A video's first frame is on screen from time 0, even where its timestamp
    is a little later (a decoder delay written into the file)."""
    for number, (start, end, frame) in enumerate(timed):
        yield (min(start, Fraction(0)) if number == 0 else start), end, frame


# --- random clips -----------------------------------------------------------


def sample_generator(seed, epoch, index, attempt=0):
    """The one source of randomness for a sample: a generator seeded by a hash
    of ``(seed, epoch, index, attempt)``, so neighbouring seeds and indices give
    unrelated streams and nothing depends on worker or call order."""
    digest = hashlib.sha256(f"{seed}:{epoch}:{index}:{attempt}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def cover_size(source, target):
    """The smallest size with ``source``'s aspect ratio that covers ``target``
    (both ``(height, width)``): the short side scaled to fit, the long one cropped."""
    scale = max(target[0] / source[0], target[1] / source[1])
    return max(target[0], round(source[0] * scale)), max(target[1], round(source[1] * scale))


def to_model_range(clip):
    """uint8 ``(T, H, W, 3)`` to float ``(T, 3, H, W)`` in [-1, 1]."""
    return clip.permute(0, 3, 1, 2).float().div(127.5).sub(1).contiguous()  # channels-first in memory too, as models expect


def resize_crop(pixels, size, top, left, flip=False):
    """Resize ``pixels`` (T, 3, H, W) to cover ``size`` and crop it there; ``top``
    and ``left`` in [0, 1) place the crop within the slack."""
    height, width = cover_size(pixels.shape[-2:], size)
    if (height, width) != tuple(pixels.shape[-2:]):
        pixels = resize(pixels, (height, width), interpolation="bilinear", antialias=True)
    y, x = int(top * (height - size[0] + 1)), int(left * (width - size[1] + 1))
    pixels = pixels[..., y:y + size[0], x:x + size[1]]
    return (pixels.flip(-1) if flip else pixels).clamp(-1, 1)


def as_size(size):
    height, width = (size, size) if isinstance(size, int) else size
    return int(height), int(width)


def names(paths, root, limit=3):
    shown = [relative_or_full(p, root) for p in paths[:limit]]
    return ", ".join(shown) + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def relative_or_full(path, root):
    try:
        return relative_key(path, root)
    except ValueError:
        return str(path)


class VideoClips(torch.utils.data.Dataset):
    """Random clips of ``frames`` frames at ``fps`` from a folder of videos (or a
    list of ``VideoItem``), resized and cropped to ``size`` (height, width):
    ``{"pixels": (T, 3, H, W) in [-1, 1], "caption": str}``, one per usable
    video and epoch.

    Sample ``index`` depends only on ``(seed, epoch, index)``: call
    ``set_epoch`` before each epoch, as with ``DistributedSampler``. (A
    DataLoader with ``persistent_workers`` keeps copies made before the call;
    leave it off or recreate the loader per epoch.)"""

    def __init__(self, source, frames, fps, size, seed=0, flip=False):
        if frames < 1 or fps <= 0:
            raise ValueError(f"a clip needs at least 1 frame at a positive fps, not {frames} frames at {fps} fps")
        self.frames, self.fps, self.size, self.seed, self.flip = int(frames), fps, as_size(size), int(seed), bool(flip)
        self.epoch = 0
        if isinstance(source, (str, os.PathLike)):
            self.root, items = Path(source), find_videos(source)
        else:
            items = list(source)
            self.root = Path(os.path.commonpath([Path(item.path).parent for item in items])) if items else None
        self.found = len(items)
        self.uncaptioned = sum(not item.caption for item in items)
        self.skipped, self.skipped_files = Counter(), {}
        self.videos, self.infos = [], []
        for item in items:
            reason, info = self.check(item)
            if reason:
                self.skipped[reason] += 1
                self.skipped_files.setdefault(reason, []).append(Path(item.path))
            else:
                self.videos.append(item)
                self.infos.append(info)
        if not self.videos:
            raise ValueError(self.nothing_usable())

    def check(self, item):
        """``(reason, None)`` if the video cannot give a clip, else ``(None, info)``."""
        try:
            info = probe(item.path)
        except VideoReadError:
            return UNREADABLE, None
        if info.duration <= clip_span(self.frames, self.fps):
            return TOO_SHORT, None
        return None, info

    def nothing_usable(self):
        where = str(self.root) if self.root else "the given list of videos"
        if not self.found:
            kinds = ", ".join(VIDEO_EXTENSIONS)
            return f"no video files in {where} (looked for {kinds}, in subfolders too): put the training videos there, or point to the folder that holds them"
        reasons = []
        if UNREADABLE in self.skipped_files:
            paths = self.skipped_files[UNREADABLE]
            reasons.append(f"{len(paths)} could not be opened or decoded ({names(paths, self.root)}): re-encode them, e.g. `ffmpeg -i in.mov -c:v libx264 -pix_fmt yuv420p out.mp4`")
        if TOO_SHORT in self.skipped_files:
            paths = self.skipped_files[TOO_SHORT]
            need = float(clip_span(self.frames, self.fps))
            reasons.append(f"{len(paths)} are too short for {self.frames} frames at {self.fps} fps, which need more than {need:.2f} s ({names(paths, self.root)}): use fewer frames or a higher fps, or longer videos")
        return f"no usable videos in {where}: {self.found} video files found; " + "; ".join(reasons)

    def summary(self):
        """One line for the log: what was found, used and skipped, and why."""
        skipped = ", ".join(f"{count} {reason}" for reason, count in sorted(self.skipped.items()))
        return (f"{len(self.videos)} of {self.found} videos usable" + (f" ({skipped})" if skipped else "")
                + f"; {self.uncaptioned} without caption; clips of {self.frames} frames at {self.fps} fps, {self.size[0]}x{self.size[1]}")

    def settings(self):
        """What determines the clips, for the latent cache's key."""
        return {"frames": self.frames, "fps": float(self.fps), "size": list(self.size), "seed": self.seed, "flip": self.flip}

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def __len__(self):
        return len(self.videos)

    def __getitem__(self, index):
        """Sample ``index`` of this epoch. If its video fails to read (changed since
        it was probed), another is drawn from the same seeded stream, so the
        substitute is the same on every run."""
        video = index
        for attempt in range(MAX_ATTEMPTS):
            generator = sample_generator(self.seed, self.epoch, index, attempt)
            if attempt:
                video = int(torch.randint(len(self), (1,), generator=generator))
            try:
                return self.clip(video, generator)
            except VideoReadError as error:
                self.skipped[FAILED] += 1
                last = error
        raise VideoReadError(f"{MAX_ATTEMPTS} videos in a row failed to read for sample {index}; the last: {last}")

    def clip(self, video, generator):
        """The clip of video number ``video`` chosen by ``generator``: start time,
        crop position and flip, always drawn in that order (so switching ``flip``
        on does not move the crops)."""
        start, top, left, flip = torch.rand(4, generator=generator, dtype=torch.float64).tolist()
        item, info = self.videos[video], self.infos[video]
        start = Fraction(start) * (info.duration - clip_span(self.frames, self.fps))
        pixels = to_model_range(read_clip(item.path, self.frames, self.fps, start))
        return {"pixels": resize_crop(pixels, self.size, top, left, self.flip and flip < 0.5), "caption": item.caption}


# --- pre-encoded latents ----------------------------------------------------

REQUIRED_SETTINGS = ("frames", "fps", "size", "seed", "encoder")


def settings_json(settings):
    return json.dumps(settings, sort_keys=True, separators=(",", ":"))


class LatentCache:
    """Latents of clips, encoded once and reused while the settings stay the same.

    ``settings`` says what the latents depend on: the clips' ``frames``,
    ``fps``, ``size`` and ``seed`` (``VideoClips.settings()`` gives them) and the
    ``encoder`` (a name and hash of the VAE, from the caller). Each distinct
    settings gets its own subfolder named by their hash, and every file carries
    them in its metadata, so latents made under other settings are never mixed
    in: a changed setting encodes afresh (the old subfolder stays, for going back)."""

    def __init__(self, folder, settings):
        missing = [key for key in REQUIRED_SETTINGS if key not in settings]
        if missing:
            raise ValueError(f"latent cache settings lack {', '.join(missing)}: the cached latents depend on them, so they must be part of the cache's key")
        self.settings = json.loads(settings_json(settings))  # normalised: tuples become lists
        self.key = hashlib.sha256(settings_json(self.settings).encode()).hexdigest()[:16]
        self.folder = Path(folder) / self.key
        self.skipped = Counter()

    def clip_file(self, video_key, clip):
        return f"{hashlib.sha256(video_key.encode()).hexdigest()[:16]}_{clip:03d}.safetensors"

    def encode_all(self, dataset, encode_fn, clips_per_video=1, progress=True):
        """Encode clip ``k`` (what ``dataset`` serves at epoch ``k``) of every video
        for ``k < clips_per_video`` with ``encode_fn(pixels (T, 3, H, W)) ->
        latents (T, c, h, w)``, reusing the files already made with the same
        settings for an unchanged video. Returns counts of clips encoded, reused
        and failed."""
        self.check_dataset(dataset)
        self.folder.mkdir(parents=True, exist_ok=True)
        counts, entries = Counter(), []
        total, started = len(dataset) * clips_per_video, time.monotonic()
        report = Progress(total, "encoding latents") if progress else None
        for video, item in enumerate(dataset.videos):
            key, identity = relative_or_full(item.path, dataset.root), video_identity(item.path)
            clips = []
            for clip in range(clips_per_video):
                name = self.clip_file(key, clip)
                if self.is_current(self.folder / name, key, identity):
                    counts["reused"] += 1
                    clips.append(name)
                else:
                    try:
                        pixels = dataset.clip(video, sample_generator(dataset.seed, clip, video))["pixels"]
                    except VideoReadError:
                        self.skipped[FAILED] += 1
                        counts["failed"] += 1
                    else:
                        with torch.no_grad():
                            latents = encode_fn(pixels)
                        self.save(self.folder / name, latents, key, identity, clip)
                        counts["encoded"] += 1
                        clips.append(name)
                if report:
                    report.update(sum(counts.values()), f"{counts['reused']} reused, {counts['failed']} failed")
            if clips:
                entries.append({"video": key, "caption": item.caption, "clips": clips})
        write_atomically(self.folder / "index.json", json.dumps({"settings": self.settings, "videos": entries}, indent=1).encode())
        return {"encoded": counts["encoded"], "reused": counts["reused"], "failed": counts["failed"], "seconds": time.monotonic() - started}

    def check_dataset(self, dataset):
        """Refuse a dataset whose clips differ from what the settings say: its
        latents would be filed under settings they were not made with."""
        differ = {key: (self.settings[key], value) for key, value in json.loads(settings_json(dataset.settings())).items()
                  if key in self.settings and self.settings[key] != value}
        if differ:
            details = ", ".join(f"{key}: {ours} in the cache settings, {theirs} in the dataset" for key, (ours, theirs) in differ.items())
            raise ValueError(f"the latent cache settings do not match the dataset ({details}); build them from dataset.settings()")

    def metadata(self, key, identity, clip):
        return {"settings": settings_json(self.settings), "video": key, "video_identity": identity, "clip": str(clip)}

    def is_current(self, path, key, identity):
        if not path.is_file():
            return False
        try:
            with safe_open(str(path), "pt") as f:
                stored = f.metadata() or {}
        except Exception:  # a half-written or damaged file: encode it again
            return False
        expected = self.metadata(key, identity, stored.get("clip"))
        return all(stored.get(name) == value for name, value in expected.items())

    def save(self, path, latents, key, identity, clip):
        tensors = {"latents": latents.detach().to("cpu").contiguous()}
        temporary = path.with_suffix(".tmp")
        save_file(tensors, str(temporary), metadata=self.metadata(key, identity, clip))
        os.replace(temporary, path)

    def index(self):
        """The cached videos: ``[{"video", "caption", "clips"}]``, checked against
        these settings."""
        path = self.folder / "index.json"
        if not path.is_file():
            raise ValueError(f"no latents cached for these settings in {self.folder.parent} (expected {path}): run LatentCache.encode_all first")
        index = read_json(path, CACHE_FIX)
        if not isinstance(index, dict) or not isinstance(index.get("videos"), list) or not all(map(is_index_entry, index["videos"])):
            raise DataFileError(f"{path} is not a latent-cache index (a table of settings and videos, each with its caption and clip files): {CACHE_FIX}")
        if index.get("settings") != self.settings:
            raise DataFileError(f"{path} was written for other settings ({str(index.get('settings'))[:200]}, not {self.settings}): run LatentCache.encode_all again")
        return index["videos"]


def is_index_entry(entry):
    """One video of a latent-cache index: its name, caption and clip files, which lie in the cache folder itself."""
    return (
        isinstance(entry, dict) and isinstance(entry.get("video"), str) and isinstance(entry.get("caption"), str)
        and isinstance(entry.get("clips"), list) and all(isinstance(clip, str) and clip == os.path.basename(clip) and clip.endswith(".safetensors") for clip in entry["clips"])
    )


def cached_clip(path):
    """The header of one cached clip, checked to hold one float tensor of latents ``(T, c, h, w)``."""
    header = open_safetensors(path, CACHE_FIX, what="cached latents")
    if set(header.shapes) != {"latents"} or len(header.shapes["latents"]) != 4:
        raise header.refuse(f"holds {sorted(header.shapes)[:3]}, not one tensor of latents (frames, channels, height, width)")
    return header


def video_identity(path):
    """Size and modification time: a video replaced since its clips were encoded
    gets encoded again."""
    stat = os.stat(path)
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def write_atomically(path, data):
    temporary = path.with_suffix(".tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


class LatentClips(torch.utils.data.Dataset):
    """``{"latents": (T, c, h, w), "caption": str}`` from a ``LatentCache``, one
    per cached video and epoch; which of a video's cached clips is served
    depends only on ``(seed, epoch, index)``, as in ``VideoClips``."""

    def __init__(self, cache, seed=None):
        self.cache = cache
        self.seed = cache.settings["seed"] if seed is None else int(seed)
        self.epoch = 0
        self.videos = cache.index()
        if not self.videos:
            raise ValueError(f"the latent cache {cache.folder} holds no clips: every video failed to read when it was encoded")
        expected = settings_json(cache.settings)
        for entry in self.videos:
            for name in entry["clips"]:
                path = cache.folder / name
                if not path.is_file():
                    raise DataFileError(f"{path} is listed in the latent cache index but missing: run LatentCache.encode_all again")
                if cached_clip(path).metadata.get("settings") != expected:
                    raise DataFileError(f"{path} was encoded with other settings: run LatentCache.encode_all again")

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def __len__(self):
        return len(self.videos)

    def __getitem__(self, index):
        entry = self.videos[index]
        generator = sample_generator(self.seed, self.epoch, index)
        clip = int(torch.randint(len(entry["clips"]), (1,), generator=generator))
        return {"latents": cached_clip(self.cache.folder / entry["clips"][clip]).tensors()["latents"], "caption": entry["caption"]}


class Progress:
    """Plain-text progress on stderr, at most one line a second (tqdm is not a
    dependency of the pack)."""

    def __init__(self, total, label, every=1.0):
        self.total, self.label, self.every = total, label, every
        self.started = self.shown = time.monotonic()

    def update(self, done, note=""):
        now = time.monotonic()
        if now - self.shown < self.every and done < self.total:
            return
        self.shown = now
        rate = done / max(now - self.started, 1e-9)
        eta = (self.total - done) / rate if rate else math.inf
        print(f"{self.label}: {done}/{self.total} clips, {rate:.1f}/s, {eta:.0f} s left" + (f", {note}" if note else ""), file=sys.stderr, flush=True)
