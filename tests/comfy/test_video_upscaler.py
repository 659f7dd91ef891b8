"""The Video Upscaler node in a real ComfyUI, on a tiny random SD x4 upscaler:
one tile and one window are exactly ComfyUI's own x4 upscaling, fresh layers
change nothing, trained ones couple frames, tiles and windows blend with
bounded seams, and bad inputs are refused with the fix."""

import importlib
import logging

import pytest
import torch

from prompt_parts import key

SHAPE = "4,16,16,3"  # frames, height, width, channels of the low-res video
STEPS, SEED = 2, 5
TRAINED = "vldm_test_upscaler8.safetensors"  # trained-looking upscaler layers, 8 frames
KEYFRAME_ONLY = "vldm_test_upscaler_keyframe8.safetensors"  # upscaler layout, not trained for upscaling
SD15_LAYERS = "vldm_test_sd15_for_upscaler8.safetensors"  # trained-looking layers of the tiny SD1.x model
FRESH = "fresh (untrained, for training)"


@pytest.fixture(scope="module")
def upscaler(comfy):
    """The node's module, and ComfyUI's own x4 conditioning node (the harness
    loads no comfy_extras), as the reference."""
    module = comfy.module("nodes.video_upscaler")
    from comfy_extras.nodes_sdupscale import SD_4XUpscale_Conditioning

    comfy.add_nodes({"SD_4XUpscale_Conditioning": SD_4XUpscale_Conditioning})
    return module


@pytest.fixture(scope="module")
def files(comfy, upscaler):
    comfy.save_trained_looking_layers(TRAINED, 8, ("upscaler",), model=comfy.tiny_upscaler())
    comfy.save_trained_looking_layers(KEYFRAME_ONLY, 8, ("keyframe",), model=comfy.tiny_upscaler())
    comfy.save_trained_looking_layers(SD15_LAYERS, 8, ("keyframe", "upscaler"))


SD15_LOADER = {"class_type": "VLDMTest_TinyModel", "inputs": {"seed": 0, "context_dim": 768}}


def prompt(out, layers=None, shape=SHAPE, vary_frame=-1, loader=None, **settings):
    """Tiny upscaler (or ``loader``), optionally patched -> Video Upscaler -> capture ``out``."""
    inputs = dict(noise_augmentation=0.2, tile_size=64, tile_overlap=8, window_frames=0, window_overlap=2, seed=SEED, steps=STEPS, cfg=4.0,
                  sampler_name="euler", scheduler="normal", frame_rate=7.5)
    graph = {
        "1": loader or {"class_type": "VLDMTest_TinyUpscaler", "inputs": {"seed": 0}},
        "2": {"class_type": "VLDMTest_Image", "inputs": {"shape": shape, "seed": 3, "vary_frame": vary_frame}},
        "4": {"class_type": "VLDM_VideoUpscaler", "inputs": {
            "model": ["3", 0] if layers else ["1", 0], "positive": ["1", 1], "negative": ["1", 2], "images": ["2", 0], **inputs, **settings}},
        "5": {"class_type": "VLDMTest_CaptureLatent", "inputs": {"samples": ["4", 0], "key": out}},
    }
    if layers:
        graph["3"] = {"class_type": "VLDM_TemporalUNetPatcher", "inputs": {"model": ["1", 0], "temporal_layers": layers}}
    return graph


def upscale(comfy, layers=None, **options):
    """The LATENT's samples, and the run's messages."""
    out = key()
    result = comfy.run(prompt(out, layers, **options))
    assert result.ok, result.messages
    result.latent = comfy.latents[out]
    return result.latent["samples"], result


def ui_text(result):
    return [text for m in result.events("executed") if m["node"] == "4" for text in m["output"]["text"]]


# ------------------------------------------------------------------ what it computes


@pytest.mark.parametrize("layers", [None, TRAINED])
def test_one_tile_and_one_window_are_comfyuis_own_x4_upscaling(comfy, files, layers):
    """Tile and window covering the video: the same latents as ComfyUI's
    SD_4XUpscale_Conditioning + KSampler (noise augmentation included)."""
    ours, _ = upscale(comfy, layers)
    reference = {k: v for k, v in prompt("unused", layers).items() if k != "4"}
    reference["6"] = {"class_type": "SD_4XUpscale_Conditioning", "inputs": {
        "images": ["2", 0], "positive": ["1", 1], "negative": ["1", 2], "scale_ratio": 4.0, "noise_augmentation": 0.2}}
    reference["7"] = {"class_type": "KSampler", "inputs": {
        "model": ["3", 0] if layers else ["1", 0], "seed": SEED, "steps": STEPS, "cfg": 4.0, "sampler_name": "euler", "scheduler": "normal",
        "positive": ["6", 0], "negative": ["6", 1], "latent_image": ["6", 2], "denoise": 1.0}}
    reference["5"]["inputs"] = {"samples": ["7", 0], "key": key()}
    result = comfy.run(reference)
    assert result.ok, result.messages
    theirs = comfy.captured[reference["5"]["inputs"]["key"]]
    assert ours.shape == theirs.shape == (4, 4, 16, 16)
    assert torch.allclose(ours, theirs, atol=1e-6)


def test_fresh_temporal_layers_leave_the_upscaler_unchanged(comfy, files):
    """Identity at init, through tiles and windows: the bit-identical result."""
    tiled = dict(tile_size=8, tile_overlap=4, window_frames=2, window_overlap=1)
    image_model, _ = upscale(comfy, **tiled)
    video_model, result = upscale(comfy, FRESH, **tiled)
    assert torch.equal(video_model, image_model)
    assert "fresh (untrained) temporal layers" in ui_text(result)[0]


def test_output_shape_frame_rate_and_one_progress_bar(comfy, files):
    latent, result = upscale(comfy, TRAINED, shape="3,16,24,3", tile_size=16, tile_overlap=8, window_frames=2, window_overlap=1)
    assert latent.shape == (3, 4, 16, 24) and torch.isfinite(latent).all()
    assert result.latent["frame_rate"] == 7.5
    assert ui_text(result) == []  # trained layers: nothing to warn about
    pieces = 2 * 1 * 2  # windows (0-2, 1-3) x tile rows x tile columns (0-16, 8-24)
    progress = [(p["value"], p["max"]) for p in result.events("progress") if p["node"] == "4"]
    assert progress == [(value, pieces * STEPS) for value in range(1, pieces * STEPS + 1)]
    _, unknown_rate = upscale(comfy, frame_rate=0.0)
    assert "frame_rate" not in unknown_rate.latent


@pytest.mark.parametrize("layers, coupled", [(None, False), (FRESH, False), (TRAINED, True)])
def test_frames_couple_only_through_trained_temporal_layers(comfy, files, layers, coupled):
    """Changing the first low-res frame changes the other frames' output only
    where trained temporal layers see the frames as one video."""
    before, _ = upscale(comfy, layers)
    after, _ = upscale(comfy, layers, vary_frame=0)
    assert (after[0] - before[0]).abs().max() > 0.1
    others = (after[1:] - before[1:]).abs().max()
    assert others > 1e-3 if coupled else others < 1e-6


def test_spatial_tiles_blend_with_bounded_seams(comfy, files):
    """32x32 frames in 16-pixel tiles: blended over an 8-pixel overlap, the result
    stays much closer to the one-tile result than tiles that just abut."""
    options = dict(shape="2,32,32,3")
    whole, _ = upscale(comfy, **options, tile_size=32)
    blended, _ = upscale(comfy, **options, tile_size=16, tile_overlap=8)
    abutting, _ = upscale(comfy, **options, tile_size=16, tile_overlap=0)
    blended_error, seam_error = (blended - whole).abs().max(), (abutting - whole).abs().max()
    assert seam_error > 0.1  # a tile does see less than the frame: there is a seam to hide
    assert blended_error < 0.5 * seam_error


def test_temporal_windows_blend_with_bounded_seams(comfy, files):
    """8 frames in windows of 4 with trained layers: each window sees fewer frames
    than one window of 8, so every frame moves a little; blended over 2 frames,
    no frame moves as far as the frames where windows that just abut meet."""
    options = dict(shape="8,16,16,3")
    whole, _ = upscale(comfy, TRAINED, **options, window_frames=8)
    blended, _ = upscale(comfy, TRAINED, **options, window_frames=4, window_overlap=2)
    abutting, _ = upscale(comfy, TRAINED, **options, window_frames=4, window_overlap=0)
    blended_error, seam_error = ((x - whole).abs().mean((1, 2, 3)) for x in (blended, abutting))
    assert seam_error.argmax() in (3, 4)  # the seam between frames 0-3 and 4-7
    assert blended_error.max() < 0.85 * seam_error.max()


def test_the_same_seed_gives_the_same_noise_wherever_windows_fall(comfy, files):
    """A frame gets its slice of the whole video's noise and augmentation, whichever
    windows it is in: without temporal layers, overlapping windows of 2 frames
    give what one window of 4 gives (up to the float rounding of another batch size)."""
    overlapping, _ = upscale(comfy, window_frames=2, window_overlap=1)
    one_window, _ = upscale(comfy, window_frames=4)
    assert torch.allclose(overlapping, one_window, atol=1e-3)


# ------------------------------------------------------------------ saying what it does


def test_without_temporal_layers_it_says_it_upscales_frame_by_frame(comfy, files, caplog):
    with caplog.at_level(logging.WARNING):
        _, result = upscale(comfy)
    message = "no temporal layers: upscaled frame by frame (load upscaler temporal layers with Temporal UNet Patcher"
    assert message in ui_text(result)[0]
    assert any(message in record.getMessage() for record in caplog.records)


def test_cancel_stops_between_tiles(comfy, files, monkeypatch):
    mm, sample = importlib.import_module("comfy.model_management"), importlib.import_module("comfy.sample")
    real_sample, calls = sample.sample, []

    def cancel_after_first_tile(*args, **kwargs):
        calls.append(1)
        mm.interrupt_current_processing(True)  # the user presses Cancel during the first tile
        return real_sample(*args, **kwargs)

    monkeypatch.setattr(sample, "sample", cancel_after_first_tile)
    try:
        result = comfy.run(prompt(key(), tile_size=8, tile_overlap=0))
    finally:
        mm.interrupt_current_processing(False)
    assert result.events("execution_interrupted") and len(calls) == 1


def test_the_incoming_model_is_not_changed(comfy, upscaler):
    model = comfy.tiny_upscaler()
    positive, negative = comfy.tiny_conds(1024)
    options_before = repr(model.model_options)
    upscaler.VideoUpscaler.execute(model, positive, negative, torch.rand(2, 8, 8, 3), 0.2, 8, 0, 0, 0, 0, 1, 1.0, "euler", "normal")
    assert repr(model.model_options) == options_before and model.get_additional_models_with_key("vldm_temporal_layers") == []


# ------------------------------------------------------------------ refusing what does not fit


def run_error(comfy, graph):
    result = comfy.run(graph)
    assert not result.ok
    return result.error


def test_layers_not_trained_for_upscaling_are_refused(comfy, files):
    error = run_error(comfy, prompt(key(), KEYFRAME_ONLY))
    assert error["node_type"] == "VLDM_VideoUpscaler"
    assert "trained for keyframe, not upscaler: load a temporal-layer file trained as an upscaler model" in error["exception_message"]


@pytest.mark.parametrize("loader, layers, built_for, model_is", [
    (None, SD15_LAYERS, "SD1.x", "SD x4 upscaler"),  # base-UNet layers on the upscaler
    (SD15_LOADER, TRAINED, "SD x4 upscaler", "SD1.x"),  # upscaler layers on a base UNet
])
def test_layers_of_the_other_unet_are_refused_by_the_patcher(comfy, files, loader, layers, built_for, model_is):
    error = run_error(comfy, prompt(key(), layers, loader=loader))
    assert error["node_type"] == "VLDM_TemporalUNetPatcher"
    assert f"built for {built_for}" in error["exception_message"] and f"this MODEL is {model_is}" in error["exception_message"]


def test_an_sd15_model_is_refused_with_the_fix(comfy, files):
    error = run_error(comfy, prompt(key(), loader=SD15_LOADER))
    assert error["node_type"] == "VLDM_VideoUpscaler"
    assert "this MODEL is SD1.x, the Video Upscaler needs the SD x4 upscaler (x4-upscaler-ema.safetensors" in error["exception_message"]


@pytest.mark.parametrize("settings, fix", [
    (dict(tile_size=16, tile_overlap=16), "tile_overlap 16 must be smaller than tile_size 16: lower tile_overlap"),
    (dict(tile_size=20), "tile_size 20 is not a multiple of 8 (the x4 upscaler's UNet needs that): use 16 or 24"),
    (dict(shape="2,20,16,3"), "frames of 16x20 (width x height): the x4 upscaler needs both in multiples of 8; crop them to 16x16 or resize them to 16x24"),
    (dict(shape="2,4,16,3"), "frames of 16x4 (width x height): the x4 upscaler needs both in multiples of 8; resize them to 16x8"),
    (dict(shape="2,16,16,4"), "this IMAGE has shape (2, 16, 16, 4); the Video Upscaler takes frames as (frames, height, width, 3)"),
    (dict(shape="16,16,3"), "this IMAGE has shape (16, 16, 3)"),
    (dict(window_frames=4, window_overlap=4), "window_overlap 4 must be smaller than the window of 4 frames"),
    (dict(layers=TRAINED, window_frames=16), "window_frames 16 is more than the 8 frames these temporal layers were trained on: use at most 8"),
])
def test_bad_sizes_are_refused_with_the_fix(comfy, files, settings, fix):
    error = run_error(comfy, prompt(key(), **settings))
    assert error["node_type"] == "VLDM_VideoUpscaler"
    assert fix in error["exception_message"]
