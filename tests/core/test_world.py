"""The synthetic world: scenes from seeds, exact bouncing motion, captions,
renders at any size and fps, the training dataset and the video folder."""

import torch
import torch.nn.functional as F

from vldm_core.train.data import VideoClips, read_clip, to_model_range
from vldm_core.world import (
    BACKGROUNDS, MAX_GRADIENT, PALETTE, SHAPES, World, WorldClips, caption, parse_caption, scene_seed, to_unit_rgb, write_videos,
)

SEEDS = range(24)


def test_a_seed_fixes_the_scene_and_its_frames():
    assert World.from_seed(3) == World.from_seed(3)
    assert torch.equal(World.from_seed(3).clip(6, 8, 32, start=1.5), World.from_seed(3).clip(6, 8, 32, start=1.5))
    assert len({World.from_seed(seed) for seed in SEEDS}) == len(SEEDS)


def test_scenes_vary_over_counts_shapes_colours_and_backgrounds():
    worlds = [World.from_seed(seed) for seed in SEEDS]
    assert {len(w.movers) for w in worlds} == {1, 2, 3}
    assert {m.shape for w in worlds for m in w.movers} == set(SHAPES)
    assert {m.colour for w in worlds for m in w.movers} == set(PALETTE)
    assert len({w.background for w in worlds}) > 1
    assert all(len({m.colour for m in w.movers}) == len(w.movers) for w in worlds)  # colours are unique in a scene


def test_positions_depend_on_time_alone_not_on_fps_or_start():
    world = World.from_seed(5)
    slow, fast = world.clip(9, 4, 32, start=2.0), world.clip(25, 12, 32, start=2.0)
    assert torch.allclose(slow, fast[::3], atol=1e-5)
    assert torch.allclose(world.clip(4, 4, 32, start=3.0), slow[4:8], atol=1e-5)
    assert world.states([2.5]) == [world.states([1.0, 2.5])[1]]


def test_objects_bounce_inside_the_frame_and_their_lanes_keep_them_apart():
    times = torch.linspace(0, 500, 5001, dtype=torch.float64)
    for seed in SEEDS:
        world = World.from_seed(seed)
        centres = world.centres(times)
        half = torch.tensor([m.size / 2 for m in world.movers], dtype=torch.float64)[None, :, None]
        assert (centres - half >= -1e-9).all() and (centres + half <= 1 + 1e-9).all()
        speeds = torch.tensor([[abs(v) for v in m.velocity] for m in world.movers], dtype=torch.float64)
        steps = (centres[1:] - centres[:-1]).abs()
        assert (steps <= speeds * float(times[1] - times[0]) + 1e-9).all()  # a bounce reflects, never jumps
        assert (steps.amax(dim=0) > 0.9 * speeds * float(times[1] - times[0])).all()  # and keeps the speed
        for a in range(len(world.movers)):
            for b in range(a):
                gap = (centres[:, a] - centres[:, b]).abs() - half[0, a] - half[0, b]
                assert (gap.amax(dim=-1) >= -1e-9).all()  # separated along x or y at all times


def test_captions_name_the_objects_and_parse_back():
    assert caption([("red", "circle")]) == "a red circle"
    assert caption([("red", "circle"), ("blue", "square")]) == "a red circle and a blue square"
    assert caption([("red", "circle"), ("blue", "square"), ("green", "triangle")]) == "a red circle, a blue square and a green triangle"
    for seed in SEEDS:
        world = World.from_seed(seed)
        assert world.caption == caption(world.objects)
        assert parse_caption(world.caption) == world.objects == [(m.colour, m.shape) for m in world.movers]
    assert parse_caption("A  Red Circle bounces past a cyan triangle.") == [("red", "circle"), ("cyan", "triangle")]
    assert parse_caption("a purple circle") == []


def test_renders_show_each_object_in_its_colour_over_the_background():
    x = (torch.arange(64) + 0.5) / 64
    for seed in SEEDS:
        world = World.from_seed(seed)
        frames = world.clip(3, 8, 64, start=seed)
        assert frames.shape == (3, 3, 64, 64) and frames.dtype == torch.float32 and frames.is_contiguous()
        assert frames.min() >= -1 and frames.max() <= 1
        backdrop = world.backdrop(64, 64)
        assert (backdrop - to_unit_rgb(world.background)[:, None, None]).abs().max() < MAX_GRADIENT  # a gentle gradient
        for state, frame in zip(world.states(torch.arange(3) / 8 + seed), frames):
            outside = torch.ones(64, 64, dtype=torch.bool)
            for obj in state:
                cx, cy = obj.centre
                # a point inside each shape, whatever it is: on the vertical axis, below the centre
                inside = frame[:, int((cy + obj.size / 4) * 64), int(cx * 64)]
                assert torch.allclose(inside, to_unit_rgb(PALETTE[obj.colour]), atol=1e-5)
                reach = obj.size / 2 + 1 / 64  # the box and its anti-aliased edge
                outside &= ((x[None, :] - cx).abs() > reach) | ((x[:, None] - cy).abs() > reach)
            assert torch.equal(frame[:, outside], backdrop[:, outside])


def test_backgrounds_stay_far_from_the_palette():
    for background in BACKGROUNDS:
        distances = [float((to_unit_rgb(background) - to_unit_rgb(colour)).norm()) for colour in PALETTE.values()]
        assert min(distances) > 1.0


def test_any_resolution_shows_the_same_scene():
    world = World.from_seed(6)
    small, large = world.clip(4, 8, 32, start=7.0), world.clip(4, 8, 128, start=7.0)
    assert (F.avg_pool2d(large, 4) - small).abs().mean() < 0.005  # 0.03 for a clip 0.3 s later
    stretched = world.clip(4, 8, (32, 64), start=7.0)
    assert (F.avg_pool2d(stretched, (1, 2)) - small).abs().mean() < 0.005


def test_world_clips_serve_video_clips_format_with_epochs():
    data = WorldClips(5, frames=8, fps=8, size=(32, 48), seed=1)
    assert len(data) == 5
    sample = data[2]
    assert set(sample) == {"pixels", "caption"}
    pixels = sample["pixels"]
    assert pixels.shape == (8, 3, 32, 48) and pixels.dtype == torch.float32 and pixels.is_contiguous()
    assert pixels.min() >= -1 and pixels.max() <= 1
    assert sample["caption"] == data.world(2).caption == World.from_seed(scene_seed(1, 2)).caption
    assert torch.equal(pixels, data.world(2).clip(8, 8, (32, 48), start=data.start(2)))
    assert torch.equal(WorldClips(5, 8, 8, (32, 48), seed=1)[2]["pixels"], pixels)  # (seed, epoch, index) alone
    data.set_epoch(1)
    moved = data[2]
    assert moved["caption"] == sample["caption"] and not torch.equal(moved["pixels"], pixels)
    data.set_epoch(0)
    assert torch.equal(data[2]["pixels"], pixels)
    assert WorldClips(5, 8, 8, 32, seed=2).world(2) != data.world(2)
    assert WorldClips(5, 1, 8, 32)[0]["pixels"].shape == (1, 3, 32, 32)  # images for the image model


def test_written_videos_read_back_through_video_clips(tmp_path):
    paths = write_videos(tmp_path / "world", count=3, seconds=2, fps=8, size=32, seed=4)
    clips = VideoClips(tmp_path / "world", frames=16, fps=8, size=32)
    assert len(clips) == 3 and not clips.skipped
    assert [clips[i]["caption"] for i in range(3)] == [WorldClips(3, 16, 8, 32, seed=4)[i]["caption"] for i in range(3)]
    assert [p.with_suffix(".txt").read_text().strip() for p in paths] == [World.from_seed(scene_seed(4, i)).caption for i in range(3)]
    decoded = to_model_range(read_clip(paths[1], 16, 8))
    assert (decoded - World.from_seed(scene_seed(4, 1)).clip(16, 8, 32)).abs().max() < 0.05  # qp 0, 4:4:4
