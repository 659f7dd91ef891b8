"""Training data: captions, fps resampling, random clips, bad videos, the latent cache.

Every video is written here with av: a frame counter in the brightness of the
top rows (so the frames a clip picks can be read back) and a coloured square
moving below it (so crops and flips are visible).
"""

import json
import os
from fractions import Fraction

import pytest
import torch

from tiny_models import STEP, write_video
from vldm_core.train.data import (
    LatentCache, LatentClips, SeekedPast, VideoClips, VideoItem, VideoReadError, cover_size, find_videos, pick_frames,
    probe, read_clip,
)



def counters(clip):
    """The frame numbers a uint8 (T, H, W, 3) clip shows."""
    return [round(value / STEP) for value in clip[:, 2:14, :, :].float().mean(dim=(1, 2, 3)).tolist()]


def make_folder(folder, count=3, frames=30, fps=30):
    for number in range(count):
        write_video(folder / f"clip{number}.mp4", frames, fps)
    return folder


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("videos"))


# --- captions ---------------------------------------------------------------


@pytest.mark.parametrize("manifest", ["csv", "jsonl", None])
def test_captions_come_from_the_manifest_then_the_sidecar_then_nothing(tmp_path, manifest):
    for name in ["a.mp4", "b.webm", "c.mov", "d.mkv", "sub/e.MP4", "notes.txt", "still.png"]:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"")  # finding videos does not open them
    (tmp_path / "b.txt").write_text("a sidecar caption\n")
    (tmp_path / "d.txt").write_text("a sidecar the manifest overrides")
    listed = {"a.mp4": "a red square, moving", "d.mkv": "from the manifest", "sub/e.MP4": "in a subfolder"}
    if manifest == "csv":
        (tmp_path / "captions.csv").write_text("file,caption\n" + "".join(f'{f},"{c}"\n' for f, c in listed.items()))
    elif manifest == "jsonl":
        (tmp_path / "captions.jsonl").write_text("\n".join(json.dumps({"file": f, "caption": c}) for f, c in listed.items()) + "\n\n")
    found = {item.path.relative_to(tmp_path).as_posix(): item.caption for item in find_videos(tmp_path)}
    assert list(found) == ["a.mp4", "b.webm", "c.mov", "d.mkv", "sub/e.MP4"]
    expected = {"a.mp4": "", "b.webm": "a sidecar caption", "c.mov": "", "d.mkv": "a sidecar the manifest overrides", "sub/e.MP4": ""}
    if manifest:
        expected.update(listed)
    assert found == expected


def test_two_manifests_or_a_bad_header_are_refused(tmp_path):
    (tmp_path / "captions.csv").write_text("name,text\nx.mp4,y\n")
    with pytest.raises(ValueError, match="header 'file,caption'"):
        find_videos(tmp_path)
    (tmp_path / "captions.jsonl").write_text("")
    with pytest.raises(ValueError, match="keep one"):
        find_videos(tmp_path)


# --- decoding ---------------------------------------------------------------


def test_probe_reads_duration_fps_and_size(videos, tmp_path):
    info = probe(videos / "clip0.mp4")
    assert (info.duration, info.fps, info.size) == (1, 30, (48, 64))
    (tmp_path / "noise.mp4").write_bytes(os.urandom(5000))
    with pytest.raises(VideoReadError, match="noise.mp4"):
        probe(tmp_path / "noise.mp4")


def test_a_lower_fps_takes_every_nth_frame(videos):
    assert counters(read_clip(videos / "clip0.mp4", 4, 7.5)) == [0, 4, 8, 12]
    assert counters(read_clip(videos / "clip0.mp4", 4, 7.5, start=0.1)) == [3, 7, 11, 15]
    assert counters(read_clip(videos / "clip0.mp4", 5, 60, start=0.5)) == [15, 15, 16, 16, 17]  # a higher fps repeats frames
    clip = read_clip(videos / "clip0.mp4", 4, 7.5)
    assert clip.dtype == torch.uint8 and clip.shape == (4, 48, 64, 3)


def test_each_time_gets_the_latest_frame_shown_at_or_before_it():
    tenth = Fraction(1, 10)
    timed = [(k * tenth, (k + 1) * tenth, k) for k in range(5)]  # frames 0..4 at 10 fps, the last ends at 0.5 s
    assert pick_frames(iter(timed), [Fraction(0), Fraction(19, 100), Fraction(2, 10), Fraction(49, 100)]) == [0, 1, 2, 4]
    with pytest.raises(VideoReadError, match="ends at 0.500 s"):
        pick_frames(iter(timed), [Fraction(4, 10), Fraction(5, 10)])
    with pytest.raises(SeekedPast):  # a seek that landed after the clip's start
        pick_frames(iter(timed[2:]), [Fraction(1, 10)])


def test_rounded_timestamps_still_pick_the_right_frames(tmp_path):
    """webm keeps milliseconds: frame 2 of 30 fps is at 0.067 s, after 2/30 s."""
    path = write_video(tmp_path / "a.webm", 30, 30, codec="libvpx-vp9")
    assert counters(read_clip(path, 5, 15)) == [0, 2, 4, 6, 8]


def test_a_clip_late_in_a_video_seeks_and_matches_a_full_decode(tmp_path):
    path = write_video(tmp_path / "long.mp4", 48, 24, gop=6)
    assert counters(read_clip(path, 4, 8, start=1.5)) == [36, 39, 42, 45]
    assert counters(read_clip(path, 1, 24, start=47 / 24)) == [47]
    with pytest.raises(VideoReadError, match="ends at 2.000 s"):
        read_clip(path, 4, 8, start=1.8)


# --- random clips -----------------------------------------------------------


def test_clips_have_the_asked_length_shape_range_and_caption(videos):
    (videos / "clip1.txt").write_text("moving square")
    try:
        clips = VideoClips(videos, frames=6, fps=10, size=(32, 40), seed=1)
        sample = clips[1]
    finally:
        (videos / "clip1.txt").unlink()
    pixels = sample["pixels"]
    assert pixels.shape == (6, 3, 32, 40) and pixels.dtype == torch.float32
    assert pixels.min() >= -1 and pixels.max() <= 1 and pixels.std() > 0.1
    assert sample["caption"] == "moving square" and len(clips) == 3
    assert cover_size((48, 64), (32, 40)) == (32, 43) and cover_size((48, 64), (64, 64)) == (64, 85)


def test_a_sample_depends_only_on_seed_epoch_and_index(videos):
    first, second = (VideoClips(videos, 4, 10, 32, seed=7) for _ in range(2))
    order = [(0, 2), (1, 0), (0, 0), (1, 2)]
    seen = {}
    for epoch, index in order:
        first.set_epoch(epoch)
        seen[epoch, index] = first[index]
    for epoch, index in reversed(order):  # another order, another object: the same clips
        second.set_epoch(epoch)
        assert torch.equal(second[index]["pixels"], seen[epoch, index]["pixels"])
    assert not torch.equal(seen[0, 0]["pixels"], seen[1, 0]["pixels"])
    assert not torch.equal(VideoClips(videos, 4, 10, 32, seed=8)[0]["pixels"], seen[0, 0]["pixels"])


def test_flip_mirrors_some_clips_and_moves_no_crop(videos):
    plain, flipped = VideoClips(videos, 2, 10, (32, 32), seed=3), VideoClips(videos, 2, 10, (32, 32), seed=3, flip=True)
    mirrored = 0
    for epoch in range(4):
        plain.set_epoch(epoch)
        flipped.set_epoch(epoch)
        a, b = plain[0]["pixels"], flipped[0]["pixels"]
        assert torch.equal(a, b) or torch.equal(a.flip(-1), b)
        mirrored += not torch.equal(a, b)
    assert 0 < mirrored < 4


def test_bad_and_short_videos_are_skipped_and_counted(tmp_path):
    make_folder(tmp_path, count=2)
    (tmp_path / "noise.mp4").write_bytes(os.urandom(4000))
    data = (tmp_path / "clip0.mp4").read_bytes()
    (tmp_path / "truncated.mp4").write_bytes(data[: len(data) // 2])
    write_video(tmp_path / "short.mp4", 6, 30)
    clips = VideoClips(tmp_path, frames=8, fps=8, size=32)
    assert len(clips) == 2 and dict(clips.skipped) == {"unreadable": 2, "too short": 1}
    assert clips.summary().startswith("2 of 5 videos usable (1 too short, 2 unreadable); 5 without caption")
    assert clips[1]["pixels"].shape == (8, 3, 32, 32)


def test_a_video_broken_after_probing_is_counted_and_replaced_the_same_way_each_time(tmp_path):
    make_folder(tmp_path)
    first, second = (VideoClips(tmp_path, 4, 10, 32, seed=2) for _ in range(2))
    (tmp_path / "clip1.mp4").write_bytes(os.urandom(3000))
    a, b = first[1], second[1]
    assert torch.equal(a["pixels"], b["pixels"]) and first.skipped["failed to read"] >= 1


def test_an_empty_or_unusable_folder_is_an_error_naming_the_reasons_and_the_fix(tmp_path):
    with pytest.raises(ValueError, match=r"no video files in .*put the training videos there"):
        VideoClips(tmp_path, 8, 8, 32)
    (tmp_path / "broken.mp4").write_bytes(os.urandom(100))
    write_video(tmp_path / "short.mp4", 6, 30)
    with pytest.raises(ValueError) as error:
        VideoClips(tmp_path, 8, 8, 32)
    message = str(error.value)
    assert str(tmp_path) in message and "2 video files found" in message
    assert "1 could not be opened or decoded (broken.mp4): re-encode" in message
    assert "1 are too short for 8 frames at 8 fps, which need more than 0.88 s (short.mp4): use fewer frames" in message
    with pytest.raises(ValueError, match="the given list of videos"):
        VideoClips([], 8, 8, 32)


def test_a_list_of_items_works_like_a_folder(videos):
    items = [VideoItem(videos / "clip2.mp4", "two"), VideoItem(videos / "clip0.mp4", "zero")]
    clips = VideoClips(items, 4, 10, 32)
    assert len(clips) == 2 and clips[0]["caption"] == "two"


# --- latent cache -----------------------------------------------------------


class CountingEncoder:
    """A stand-in VAE: 8x average pooling to 4 channels, counting its calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, pixels):
        self.calls += 1
        return torch.nn.functional.avg_pool2d(pixels, 8).repeat(1, 2, 1, 1)[:, :4]


def test_latents_are_encoded_once_reused_and_redone_when_a_setting_changes(tmp_path, videos):
    clips = VideoClips(videos, 4, 10, 32, seed=5)
    settings = {**clips.settings(), "encoder": "pool8:0"}
    encoder = CountingEncoder()
    counts = LatentCache(tmp_path, settings).encode_all(clips, encoder, clips_per_video=2, progress=False)
    assert encoder.calls == 6 and (counts["encoded"], counts["reused"]) == (6, 0)

    counts = LatentCache(tmp_path, settings).encode_all(clips, encoder, clips_per_video=2, progress=False)
    assert encoder.calls == 6 and counts["reused"] == 6  # a later run: nothing encoded

    latents = LatentClips(LatentCache(tmp_path, settings))
    sample = latents[2]
    assert sample["latents"].shape == (4, 4, 4, 4) and sample["caption"] == ""
    served = []
    for epoch in range(2):  # clip k of a video is the clip VideoClips serves at epoch k
        clips.set_epoch(epoch)
        served.append(encoder(clips[2]["pixels"]))
    assert any(torch.equal(sample["latents"], clip) for clip in served)
    again = LatentClips(LatentCache(tmp_path, settings))
    assert all(torch.equal(latents[i]["latents"], again[i]["latents"]) for i in range(3))

    encoder.calls = 0
    LatentCache(tmp_path, {**settings, "encoder": "pool8:1"}).encode_all(clips, encoder, progress=False)
    assert encoder.calls == 3  # another encoder: its own latents, none of the old ones
    with pytest.raises(ValueError, match="frames: 4 in the cache settings, 6 in the dataset"):
        LatentCache(tmp_path, settings).encode_all(VideoClips(videos, 6, 10, 32, seed=5), encoder, progress=False)


def test_a_replaced_video_is_encoded_again(tmp_path):
    folder = make_folder(tmp_path / "videos", count=2)
    clips = VideoClips(folder, 4, 10, 32)
    cache, encoder = LatentCache(tmp_path / "cache", {**clips.settings(), "encoder": "pool8"}), CountingEncoder()
    cache.encode_all(clips, encoder, progress=False)
    write_video(folder / "clip1.mp4", 40, 30)
    assert cache.encode_all(VideoClips(folder, 4, 10, 32), encoder, progress=False)["encoded"] == 1 and encoder.calls == 3


def test_a_cache_needs_its_key_and_an_encode_before_use(tmp_path):
    with pytest.raises(ValueError, match="lack encoder"):
        LatentCache(tmp_path, {"frames": 4, "fps": 10, "size": 32, "seed": 0})
    with pytest.raises(ValueError, match="run LatentCache.encode_all first"):
        LatentClips(LatentCache(tmp_path, {"frames": 4, "fps": 10, "size": [32, 32], "seed": 0, "encoder": "x"}))
