"""Metrics of the synthetic world: exact on its own renders, and each one falls
when its kind of error is put into a video."""

import dataclasses
import math

import pytest
import torch

from vldm_core.metrics.world import detect, label_components, score
from vldm_core.train.data import read_clip, to_model_range
from vldm_core.world import PALETTE, SHAPES, World, scene_seed, write_videos

SEEDS = range(6)  # 1, 2 and 3 objects, every shape (checked below)
FRAMES, FPS = 16, 8


def render(seed, size):
    world = World.from_seed(seed)
    return world, world.clip(FRAMES, FPS, size, start=seed)


def test_the_seeds_cover_the_world():
    worlds = [World.from_seed(seed) for seed in SEEDS]
    assert {len(w.movers) for w in worlds} == {1, 2, 3}
    assert {m.shape for w in worlds for m in w.movers} == set(SHAPES)


@pytest.mark.parametrize("size", [32, 64])
def test_ground_truth_renders_score_exactly(size):
    for seed in SEEDS:
        world, video = render(seed, size)
        scores = score(video, world.caption, FPS)
        assert scores.identity_consistency == 1.0 and scores.caption_agreement == 1.0 and scores.teleports == 0.0
        assert scores.objects == tuple(sorted(world.objects))
        assert scores.acceleration < 0.004  # a tenth of a pixel at 32x32; bounces fall in the trimmed tail
        assert scores.background_flicker < 1e-4


def test_detections_match_the_ground_truth_state():
    for seed in SEEDS:
        world, video = render(seed, 32)
        for found, truth in zip(detect(video), world.states(torch.arange(FRAMES) / FPS + seed)):
            truth = {obj.colour: obj for obj in truth}
            assert sorted(d.colour for d in found) == sorted(truth)
            for d in found:
                obj = truth[d.colour]
                assert d.shape == obj.shape and d.fit > 0.85
                assert max(abs(a - b) for a, b in zip(d.centre, obj.centre)) < 0.5 / 32  # half a pixel
                assert max(abs(a - obj.size) for a in d.size) < 1 / 32


def test_a_written_and_decoded_video_scores_like_its_render(tmp_path):
    path = write_videos(tmp_path, count=1, seconds=2, fps=FPS, size=32, seed=3)[0]
    scores = score(to_model_range(read_clip(path, FRAMES, FPS)), World.from_seed(scene_seed(3, 0)).caption)
    assert scores.identity_consistency == 1.0 and scores.caption_agreement == 1.0
    assert scores.acceleration < 0.004 and scores.background_flicker < 0.01


def test_shuffled_frames_move_far_less_smoothly():
    for seed in (0, 5):
        world, video = render(seed, 64)
        shuffled = video[torch.randperm(FRAMES, generator=torch.Generator().manual_seed(seed))]
        smooth, jumpy = score(video), score(shuffled)
        assert jumpy.acceleration > 0.05 and jumpy.acceleration > 20 * smooth.acceleration
        assert jumpy.identity_consistency == 1.0  # the same objects, in the wrong order


def test_an_object_that_jumps_counts_as_a_teleport_and_the_worlds_own_motion_does_not():
    world = World.from_seed(2)  # one object
    steady = world.clip(FRAMES, 2.0, 64, start=1)  # 2 fps: steps up to the world's largest
    assert len(world.movers) == 1 and score(steady, fps=2.0).teleports == 0.0
    jumped = torch.cat([steady[:8], world.clip(8, 2.0, 64, start=31)])  # from frame 8 on, the scene 26 s later: 0.78 of the frame away
    assert score(jumped, fps=2.0).teleports == pytest.approx(1 / (FRAMES - 1))
    assert score(steady).teleports is None


def test_background_brightness_noise_raises_flicker():
    world, video = render(5, 64)
    brightness = 0.05 * torch.randn(FRAMES, 1, 1, 1, generator=torch.Generator().manual_seed(0))
    scores = score((video + brightness).clamp(-1, 1), world.caption)
    assert scores.background_flicker > 0.02 and score(video).background_flicker < 1e-4
    assert scores.identity_consistency == 1.0  # colours within tolerance still count


def test_a_colour_swapped_mid_video_lowers_consistency():
    world, video = render(0, 32)
    unused = next(colour for colour in PALETTE if colour not in {m.colour for m in world.movers})
    swapped = dataclasses.replace(world, movers=(dataclasses.replace(world.movers[0], colour=unused),) + world.movers[1:])
    video[10:] = swapped.clip(FRAMES, FPS, 32, start=0)[10:]
    scores = score(video, world.caption)
    assert scores.identity_consistency == scores.colour_consistency == pytest.approx(10 / FRAMES)
    assert scores.caption_agreement == pytest.approx(10 / FRAMES)
    assert scores.objects == tuple(sorted(world.objects))


def test_a_shape_swapped_mid_video_keeps_colour_consistency():
    world, video = render(0, 32)
    other = next(shape for shape in SHAPES if shape != world.movers[0].shape)
    swapped = dataclasses.replace(world, movers=(dataclasses.replace(world.movers[0], shape=other),) + world.movers[1:])
    video[10:] = swapped.clip(FRAMES, FPS, 32, start=0)[10:]
    scores = score(video, world.caption)
    assert scores.identity_consistency == pytest.approx(10 / FRAMES) and scores.colour_consistency == 1.0


def test_a_wrong_caption_lowers_agreement():
    world, video = render(5, 32)  # a cyan triangle, a blue circle and a green square
    assert score(video, "a green square, a cyan triangle and a blue circle").caption_agreement == 1.0  # order is free
    assert score(video, "a cyan square, a blue circle and a green square").caption_agreement == 0.0
    assert score(video, "a cyan triangle and a blue circle").caption_agreement == 0.0
    assert score(video, World.from_seed(2).caption).caption_agreement == 0.0


def test_a_video_without_objects_has_no_tracks():
    world = World.from_seed(1)
    scores = score(world.backdrop(32, 32).expand(4, -1, -1, -1))
    assert scores.objects == () and scores.identity_consistency == 1.0 and scores.caption_agreement is None
    assert math.isnan(scores.acceleration) and scores.background_flicker == 0.0
    assert math.isnan(score(render(1, 32)[1][:1]).background_flicker)  # one frame: no change to measure


def test_components_are_8_connected():
    mask = torch.zeros(1, 6, 7, dtype=torch.bool)
    mask[0, 0, 0] = mask[0, 1, 1] = mask[0, 2, 2] = True  # a diagonal: one component
    mask[0, 4:6, 4:7] = True  # a block: another
    labels = label_components(mask)[0]
    assert len(labels[mask[0]].unique()) == 2
    assert labels[0, 0] == labels[2, 2] != labels[5, 6]
    assert (labels[~mask[0]] == 0).all()
