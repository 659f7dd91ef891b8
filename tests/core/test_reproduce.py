"""The reproduction table's measurements: exact on the world's own videos, and
complete (every claim, every variant) on a tiny random bundle. What the
bundled model scores is tested in test_bundled_model.py."""

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from vldm_core.pipeline import Settings, load_bundle, plan
from vldm_core.reproduce import (
    Row, Table, background_colour, by_object_count, colour_sets, held_out_scenes, horizons, mean_rows, motion_evenness, psnr, reproduce, rollout_scores, temporal_error,
    ticks_per_scene, world_scores,
)
from vldm_core.train.cli import read_config
from vldm_core.world import World, WorldClips, scene_seed

from tiny_models import write_tiny_bundle


@pytest.fixture(scope="module")
def scene():
    return held_out_scenes(1)[0]


def test_the_world_scores_exactly_on_its_own_clips(scene):
    clip = scene.clip(12, 8.0, 32)
    scores = world_scores(clip, scene.caption, 8.0)
    assert scores["identity"] == 1 and scores["caption"] == 1 and scores["flicker"] == 0 and scores["teleports"] == 0
    shuffled = world_scores(clip[torch.randperm(12, generator=torch.Generator().manual_seed(0))], scene.caption, 8.0)
    assert scores["acceleration"] < 3e-3 < shuffled["acceleration"]
    assert shuffled["teleports"] > 0


def test_shapes_bound_to_the_wrong_colours_keep_the_caption_colours_and_lose_the_caption():
    world = next(w for w in map(World.from_seed, range(100)) if len(w.movers) == 2 and w.movers[0].shape != w.movers[1].shape)
    a, b = world.movers
    swapped = replace(world, movers=(replace(a, shape=b.shape), replace(b, shape=a.shape)))
    same = replace(world, movers=(a, replace(b, shape=a.shape)))
    right, wrong, alike = (by_object_count(w.clip(6, 2.0, 32), world.caption) for w in (world, swapped, same))
    assert right == {**dict.fromkeys(right), "caption colours, 2 objects": 1.0, "caption, 2 objects": 1.0, "shapes swapped, 2 objects": 0.0}
    assert wrong["caption colours, 2 objects"] == 1.0 and wrong["caption, 2 objects"] == 0.0 and wrong["caption, 1 object"] is None
    assert wrong["shapes swapped, 2 objects"] == 1.0 and "shapes swapped, 1 object" not in wrong
    assert alike["caption colours, 2 objects"] == 1.0 and alike["caption, 2 objects"] == alike["shapes swapped, 2 objects"] == 0.0


def test_motion_evenness_is_near_1_for_the_world_and_near_a_quarter_for_key_frames_held_4x(scene):
    clip = scene.clip(33, 8.0, 32)
    held = clip[::4].repeat_interleave(4, dim=0)[:33]
    assert motion_evenness(clip) > 0.95 and 0.2 < motion_evenness(held) < 0.3
    assert math.isnan(motion_evenness(clip[:1].expand(8, -1, -1, -1)))  # nothing moves


def test_psnr_and_temporal_error_see_flicker_that_a_constant_offset_does_not_make(scene):
    clip = scene.clip(8, 8.0, 32)
    assert temporal_error(clip, clip) == 0 and psnr(clip, clip) == 120.0
    offset = (clip + 0.1).clamp(-1, 1)
    flicker = clip + 0.1 * torch.tensor([1.0, -1.0] * 4).view(8, 1, 1, 1)
    assert temporal_error(offset, clip) < 0.01 < temporal_error(flicker, clip)
    assert psnr(flicker, clip) == pytest.approx(20 * math.log10(2 / 0.1), abs=0.01)


def test_a_rollout_segment_of_the_scene_itself_keeps_its_colours_and_does_not_drift(scene):
    first, later = scene.clip(8, 2.0, 32), scene.clip(7, 2.0, 32, start=20.0)  # the frame before the segment, then 6
    colours = tuple(sorted(m.colour for m in scene.movers))
    assert colour_sets(first) == [colours] * 8
    kept = rollout_scores(later, scene.caption, colours, background_colour(first), 2.0)
    assert kept == {"colours kept": 1.0, "caption colours": 1.0, "background drift": pytest.approx(0, abs=2e-3), "teleports": 0}  # the gradient behind moved objects
    darker = rollout_scores(later - 0.1, scene.caption, colours, background_colour(first), 2.0)
    assert darker["background drift"] == pytest.approx(0.1, abs=3e-3)
    other = World.from_seed(scene_seed(0, 1))
    assert rollout_scores(other.clip(7, 2.0, 32), scene.caption, colours, background_colour(first), 2.0)["colours kept"] == 0
    jump = torch.cat([later[:1], later[1:].roll(12, dims=-1)])  # the segment starts 12 px off where the frame before left its objects
    assert rollout_scores(jump, scene.caption, colours, background_colour(first), 2.0)["teleports"] > 0


def test_held_out_scenes_are_none_of_the_training_configs_scenes():
    seeds = {read_config(path)["train"]["seed"] for path in (Path(__file__).parents[2] / "configs").rglob("*.toml")}
    training = {str(WorldClips(200, 1, 8.0, 32, seed=seed).world(i).movers) for seed in seeds for i in range(200)}
    assert len(seeds) > 10 and not any(str(s.movers) in training for s in held_out_scenes(50))


def test_means_skip_missing_values_and_the_table_has_a_column_per_metric():
    rows = mean_rows([{"a": {"x": 1.0, "y": None}}, {"a": {"x": 3.0, "y": 2.0}}, {"a": {"x": float("nan"), "y": None}}])
    assert rows == [Row("a", {"x": 2.0, "y": 2.0})]
    text = Table("claim", ("x", "y"), rows + [Row("b", {"x": 0.12345, "y": float("nan")})]).markdown().splitlines()
    assert text == ["| claim | x | y |", "|---|---|---|", "| a | 2 | 2 |", "| b | 0.123 | n/a |"]


def test_a_rollout_is_scored_at_the_early_segments_it_reaches_and_its_last():
    assert horizons(39) == (1, 4, 16, 39)  # a 2-minute rollout of the bundled model
    assert horizons(16) == (1, 4, 16) and horizons(2) == (1, 2) and horizons(0) == (1,)


def test_every_claim_and_variant_is_measured_and_progress_ticks_per_scene(tmp_path):
    model = load_bundle(write_tiny_bundle(tmp_path / "bundle"))
    ticks = []
    settings = Settings(steps=1, upscale_steps=1)
    tables = reproduce(model, videos=1, settings=settings, progress=lambda: ticks.append(1))
    assert len(ticks) == ticks_per_scene(model) == 7
    variants = {t.claim.split(":")[0]: [r.variant for r in t.rows] for t in tables}
    assert variants == {
        "1. key frames, 2 fps": ["world (ground truth)", "image LDM, frame by frame", "Video LDM key frames"],
        "1b. key frames by number of objects": ["image LDM, frame by frame", "Video LDM key frames"],
        "2. decoding, 8 fps": ["image decoder", "temporal decoder"],
        "3. rollout": [f"{label}, segment {h}" for label in ("s = 1 (no context guidance)", "s = 1.5") for h in horizons(plan(model, settings).segments)],
        "4. motion at 8 fps": ["world (ground truth)", "key frames held 4x", "4x interpolated"],
        "5. 4x upscaling, 8 fps": ["frame by frame", "temporal upscaler"],
    }
    truth = tables[0].rows[0].values
    assert truth["identity"] == truth["caption"] == 1 and truth["flicker"] == 0
    assert not any("vldm" in type(m).__name__.lower() or "Temporal" in type(m).__name__ for m in model.unet.modules())
