"""The pack's nodes inside a real ComfyUI, on a tiny random SD1.x-layout model.

Prompts go through ComfyUI's validation and executor (see conftest.py); the
model-level checks drive ComfyUI's own sampling entry points on the MODELs the
nodes produce. The last tests check every node of the pack as a user meets it
in the frontend: stable IDs, one menu, names, descriptions, tooltips, ranges.
"""

import asyncio
import math
import os

import pytest
import torch

from prompt_parts import key
from shipped_workflows import input_definitions

FRAMES, SIZE, STEPS, CFG, SEED = 8, 32, 3, 5.0, 7
LATENT_SHAPE = (FRAMES, 4, SIZE // 8, SIZE // 8)
TRAINED = "vldm_test_trained8.safetensors"  # trained-looking layers for the 768-context tiny model, 8 frames
SD2_LAYERS = "vldm_test_sd2.safetensors"  # layers built for a 1024-context (SD2.x) tiny model
FRESH = "fresh (untrained, for training)"  # the patcher's combo value, as a workflow stores it


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def bridge(comfy):
    return comfy.module("nodes.comfy_bridge")


@pytest.fixture(scope="module")
def tiny_model(comfy):
    return comfy.tiny_model


@pytest.fixture(scope="module")
def conds(comfy):
    return comfy.tiny_conds()


@pytest.fixture(scope="module")
def sample(bridge, conds):
    """Sampling as the Keyframe Sampler does it."""

    def sample(model, seed=SEED, frames=FRAMES):
        latent = torch.zeros(frames, 4, SIZE // 8, SIZE // 8)
        return bridge.sample_frames(model, seed, STEPS, CFG, "ddim", "ddim_uniform", *conds, latent)

    return sample


@pytest.fixture(scope="module")
def sample_noise(conds):
    """ComfyUI's sampling from given initial noise (what sample_frames does after drawing it)."""
    import comfy.sample

    def sample_noise(model, noise):
        return comfy.sample.sample(model, noise, STEPS, CFG, "ddim", "ddim_uniform", *conds, torch.zeros_like(noise), seed=SEED, disable_pbar=True)

    return sample_noise


@pytest.fixture(scope="module")
def layer_files(comfy, bridge, tiny_model):
    """Temporal-layer files in the registered folder: one with non-zero (as if
    trained) last projections, one for another UNet layout."""
    save = comfy.module("vldm_core.weights").save_temporal_layers
    folder = comfy.temporal_layers_dir
    save(trained_looking(bridge.load_layers_for(tiny_model(), bridge.FRESH)), os.path.join(folder, TRAINED), train_frames=FRAMES, prediction_type="eps", overwrite=True)
    save(bridge.load_layers_for(tiny_model(context_dim=1024), bridge.FRESH), os.path.join(folder, SD2_LAYERS), train_frames=FRAMES, overwrite=True)
    return TRAINED, SD2_LAYERS


def trained_looking(layers, seed=1):
    """Give every temporal branch's zero-initialised last projection random weights,
    so the layers change the output as trained ones do."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in layers.layers.values():
            last = layer.conv2 if hasattr(layer, "conv2") else layer.proj_out
            for p in (last.weight, last.bias):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return layers


def trained_video_model(bridge, image, layer_files):
    return bridge.with_temporal_layers(image, bridge.load_layers_for(image, layer_files[0]))


# ------------------------------------------------------------- prompt parts


def loader(seed=0, context_dim=768):
    return {"class_type": "VLDMTest_TinyModel", "inputs": {"seed": seed, "context_dim": context_dim}}


def patcher(model, layers):
    return {"class_type": "VLDM_TemporalUNetPatcher", "inputs": {"model": model, "temporal_layers": layers}}


def keyframes(model, frames=FRAMES, width=SIZE, height=SIZE, conds="1"):
    return {"class_type": "VLDM_KeyframeSampler", "inputs": {
        "model": model, "positive": [conds, 1], "negative": [conds, 2], "frames": frames, "width": width, "height": height,
        "frame_rate": 8.0, "seed": SEED, "steps": STEPS, "cfg": CFG, "sampler_name": "ddim", "scheduler": "ddim_uniform",
    }}


def capture(samples, name):
    return {"class_type": "VLDMTest_CaptureLatent", "inputs": {"samples": samples, "key": name}}


# --------------------------------------------------------------------- tests


def test_pack_loads_with_its_nodes_and_a_safetensors_only_model_folder(comfy, bridge, layer_files):
    assert comfy.loaded
    for node_id in ("VLDM_TemporalUNetPatcher", "VLDM_KeyframeSampler"):
        assert node_id in comfy.nodes.NODE_CLASS_MAPPINGS
    assert comfy.nodes.NODE_DISPLAY_NAME_MAPPINGS["VLDM_TemporalUNetPatcher"] == "Temporal UNet Patcher"

    folder = os.path.join(comfy.folder_paths.models_dir, "temporal_layers")
    paths, extensions = comfy.folder_paths.folder_names_and_paths["temporal_layers"]
    assert paths[0] == folder and extensions == {".safetensors"}
    bundles = comfy.module("nodes.bundle_loader").bundle_folders().values()
    assert all(os.path.dirname(path) in bundles for path in paths[1:])  # the bundles' own temporal_layers folders (the bundled model's)

    pickles = [os.path.join(folder, name) for name in ("vldm_test_pickle.ckpt", "vldm_test_pickle.pt", "vldm_test_pickle.pth")]
    try:
        for path in pickles:
            open(path, "wb").close()
        listed = comfy.folder_paths.get_filename_list("temporal_layers")
        assert set(layer_files) <= set(listed)
        assert not [name for name in listed if not name.endswith(".safetensors")]
        options = comfy.nodes.NODE_CLASS_MAPPINGS["VLDM_TemporalUNetPatcher"].INPUT_TYPES()["required"]["temporal_layers"][1]["options"]
        motion_modules = [name for name in comfy.folder_paths.get_filename_list("animatediff_models") if name not in listed]  # AnimateDiff-Evolved's folder, after
        assert options == [FRESH] + listed + motion_modules and FRESH == bridge.FRESH
    finally:
        for path in pickles:
            os.remove(path)


def test_prompt_samples_key_frames_with_fresh_and_trained_layers(comfy, layer_files):
    def prompt(fresh_key, trained_key):
        return {
            "1": loader(),
            "2": patcher(["1", 0], FRESH),
            "3": keyframes(["2", 0]),
            "4": capture(["3", 0], fresh_key),
            "5": patcher(["1", 0], layer_files[0]),
            "6": keyframes(["5", 0]),
            "7": capture(["6", 0], trained_key),
        }

    fresh, trained = key("fresh"), key("trained")
    result = comfy.run(prompt(fresh, trained))
    assert result.ok, result.messages
    for name in (fresh, trained):
        assert comfy.captured[name].shape == LATENT_SHAPE
        assert torch.isfinite(comfy.captured[name]).all()
        assert comfy.captured[name].std() > 0.1
    assert (comfy.captured[fresh] - comfy.captured[trained]).abs().max() > 1e-2

    # A server keeps outputs across prompts: the same workflow again resamples nothing.
    again_fresh, again_trained = key("fresh"), key("trained")
    result = comfy.run(prompt(again_fresh, again_trained))
    assert result.ok
    assert {"1", "2", "3", "5", "6"} <= result.cached_nodes
    assert torch.equal(comfy.captured[again_fresh], comfy.captured[fresh])
    assert torch.equal(comfy.captured[again_trained], comfy.captured[trained])


def test_fresh_layers_sample_exactly_what_the_image_model_samples_in_a_prompt(comfy):
    image, video = key("image"), key("video")
    result = comfy.run({
        "1": loader(seed=4),
        "2": {"class_type": "EmptyLatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": FRAMES}},
        "3": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "seed": SEED, "steps": STEPS, "cfg": CFG, "sampler_name": "ddim", "scheduler": "ddim_uniform",
            "positive": ["1", 1], "negative": ["1", 2], "latent_image": ["2", 0], "denoise": 1.0,
        }},
        "4": capture(["3", 0], image),
        "5": patcher(["1", 0], FRESH),
        "6": keyframes(["5", 0]),
        "7": capture(["6", 0], video),
    })
    assert result.ok, result.messages
    assert comfy.captured[video].shape == LATENT_SHAPE
    assert torch.equal(comfy.captured[video], comfy.captured[image])


def test_original_model_stays_bit_identical(bridge, layer_files, tiny_model, sample):
    image = tiny_model(seed=3)
    structure = [(name, type(m).__name__) for name, m in image.model.named_modules()]
    state = {k: v.clone() for k, v in image.model.state_dict().items()}

    first = sample(image)
    video_model = trained_video_model(bridge, image, layer_files)
    video = sample(video_model)
    assert (video - first).abs().max() > 1e-2, "the trained layers should change the sample"
    again = sample(image)

    assert torch.equal(again, first)
    assert [(name, type(m).__name__) for name, m in image.model.named_modules()] == structure
    after = image.model.state_dict()
    assert after.keys() == state.keys()
    assert all(torch.equal(after[k], v) for k, v in state.items())
    assert image.model_state_dict().keys() == state.keys()
    assert not image.get_additional_models_with_key(bridge.KEY) and not image.injections
    assert "patches" not in image.model_options["transformer_options"]
    # and the clone still works after the image model had the UNet to itself
    assert torch.equal(sample(video_model), video)


def test_fresh_layers_are_identity_and_trained_layers_couple_the_frames(bridge, layer_files, tiny_model, sample_noise):
    import comfy.sample

    image = tiny_model(seed=5)
    fresh = bridge.with_temporal_layers(image, bridge.load_layers_for(image, bridge.FRESH))
    trained = trained_video_model(bridge, image, layer_files)

    noise = comfy.sample.prepare_noise(torch.zeros(LATENT_SHAPE), SEED)
    nudged = noise.clone()
    nudged[3] = torch.randn(nudged[3].shape, generator=torch.Generator().manual_seed(99))
    others = [i for i in range(FRAMES) if i != 3]

    image_out, image_nudged = sample_noise(image, noise), sample_noise(image, nudged)
    assert torch.equal(sample_noise(fresh, noise), image_out)
    # image model: frames are independent images, bit for bit
    assert torch.equal(image_nudged[others], image_out[others])
    assert not torch.equal(image_nudged[3], image_out[3])

    trained_out, trained_nudged = sample_noise(trained, noise), sample_noise(trained, nudged)
    assert (trained_out - image_out).abs().amax(dim=(1, 2, 3)).min() > 1e-3, "every frame should differ from the image model's"
    # video model: one frame's noise reaches every other frame
    change = (trained_nudged - trained_out).abs().amax(dim=(1, 2, 3))
    assert (change[others] > 1e-4).all(), change


def test_cond_and_uncond_batched_in_either_order_give_the_same_videos(bridge, layer_files, tiny_model, sample):
    """ComfyUI runs cond and uncond videos as one batch (in the order it chooses,
    told in cond_or_uncond); each video must come out as if run alone."""
    image = tiny_model(seed=6)
    video_model = trained_video_model(bridge, image, layer_files).clone()
    checked = []

    def forward(apply_model, args):
        x, t, c, order = args["input"], args["timestep"], args["c"], args["cond_or_uncond"]
        out = apply_model(x, t, **c)
        videos = len(order)
        if videos < 2:
            return out

        def run(chunks, cond_or_uncond):
            def pick(v):
                return torch.cat([v.chunk(videos)[i] for i in chunks]) if torch.is_tensor(v) and v.shape[0] == x.shape[0] else v

            kwargs = {k: pick(v) for k, v in c.items()}
            kwargs["transformer_options"] = dict(c["transformer_options"], cond_or_uncond=cond_or_uncond)
            return apply_model(pick(x), pick(t), **kwargs)

        batched = out.chunk(videos)
        alone = [run([i], [order[i]]) for i in range(videos)]
        swapped = run(list(reversed(range(videos))), list(reversed(order))).chunk(videos)[::-1]
        as_one_video = run(list(range(videos)), [0]).chunk(videos)  # what ignoring cond_or_uncond would compute
        checked.append((list(order), batched, alone, swapped, as_one_video))
        return out

    video_model.set_model_unet_function_wrapper(forward)
    sample(video_model)

    assert len(checked) == STEPS, "ComfyUI should have batched cond and uncond in every step"
    assert {tuple(c[0]) for c in checked} | {tuple(reversed(c[0])) for c in checked} == {(0, 1), (1, 0)}
    for order, batched, alone, swapped, as_one_video in checked:
        for i in range(len(order)):
            assert batched[i].shape[0] == FRAMES
            # Batched vs alone can differ in the last bits only (matmul blocking varies with the batch size).
            torch.testing.assert_close(batched[i], alone[i], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(swapped[i], alone[i], rtol=1e-5, atol=1e-5)
            assert (as_one_video[i] - alone[i]).abs().max() > 1e-4, "the check must be able to tell videos apart"


def spatial_weight_patches(model, seed=2):
    """LoRA-like diff patches on a few spatial (image model) weights."""
    g = torch.Generator().manual_seed(seed)
    state = model.model.state_dict()
    keys = [k for k in state if k.endswith(".weight") and state[k].ndim >= 2 and any(
        part in k for part in ("input_blocks.1.1.proj_in", "input_blocks.1.1.transformer_blocks.0.attn2.to_k", "middle_block.0.in_layers.2", "output_blocks.2.0.out_layers.3"))]
    assert len(keys) == 4, keys
    return {k: (torch.randn(state[k].shape, generator=g) * 0.05,) for k in keys}


def test_weight_patches_compose_with_the_patcher_in_either_order(bridge, layer_files, tiny_model, sample):
    image = tiny_model(seed=8)
    patches = spatial_weight_patches(image)

    lora_first = image.clone()
    assert set(lora_first.add_patches(patches)) == set(patches)
    lora_first = trained_video_model(bridge, lora_first, layer_files)

    lora_last = trained_video_model(bridge, image, layer_files).clone()
    assert set(lora_last.add_patches(patches)) == set(patches), "the patched MODEL must keep the image model's weight keys"

    without = sample(trained_video_model(bridge, image, layer_files))
    first, last = sample(lora_first), sample(lora_last)
    assert (first - without).abs().max() > 1e-3, "the weight patches should change the sample"
    assert torch.equal(first, last)


def test_low_vram_loading_samples_like_a_full_load(bridge, layer_files, tiny_model, sample, monkeypatch):
    import comfy.model_management as mm

    image = tiny_model(seed=9)
    video_model = trained_video_model(bridge, image, layer_files).clone()
    video_model.add_patches(spatial_weight_patches(image))  # applied on the fly when their modules are offloaded
    holder = video_model.get_additional_models_with_key(bridge.KEY)[0]

    mm.unload_all_models()
    full = sample(video_model)
    assert not video_model.model.model_lowvram and not holder.model.model_lowvram
    mm.unload_all_models()

    # On the CPU ComfyUI always loads fully; give each model a quarter of its size,
    # as load_models_gpu does on a GPU that is short of memory.
    real_load = mm.LoadedModel.model_load
    monkeypatch.setattr(mm.LoadedModel, "model_load", lambda self, lowvram_model_memory=0, force_patch_weights=False: real_load(self, self.model.model_size() // 4, force_patch_weights))
    try:
        low = sample(video_model)
        for patcher_ in (video_model, holder):
            assert patcher_.model.model_lowvram
            assert 0 < patcher_.loaded_size() < patcher_.model_size() // 2
        assert video_model.lowvram_patch_counter() > 0, "some weight patches should have been left to apply on the fly"
    finally:
        monkeypatch.undo()
        mm.unload_all_models()
    # Offloaded weights go through comfy.ops' cast path and their patches are
    # applied per forward instead of once; all in float32 here, so no rounding differs.
    assert torch.equal(low, full)


ERRORS = {
    "unpatched model": (
        lambda files: {"1": loader(), "2": keyframes(["1", 0]), "3": capture(["2", 0], key("x"))},
        "VLDM_KeyframeSampler", ["no Video LDM temporal layers", "Temporal UNet Patcher"],
    ),
    "more frames than trained": (
        lambda files: {"1": loader(), "2": patcher(["1", 0], files[0]), "3": keyframes(["2", 0], frames=FRAMES + 1), "4": capture(["3", 0], key("x"))},
        "VLDM_KeyframeSampler", [f"{FRAMES + 1} frames requested", f"trained on {FRAMES}", "Masked Predictor"],
    ),
    "width not a multiple of 8": (
        lambda files: {"1": loader(), "2": patcher(["1", 0], FRESH), "3": keyframes(["2", 0], width=36), "4": capture(["3", 0], key("x"))},
        "VLDM_KeyframeSampler", ["width 36 is not a multiple of 8", "use 32 or 40"],
    ),
    "patched twice": (
        lambda files: {"1": loader(), "2": patcher(["1", 0], FRESH), "3": patcher(["2", 0], FRESH),
                       "4": keyframes(["3", 0]), "5": capture(["4", 0], key("x"))},
        "VLDM_TemporalUNetPatcher", ["already has Video LDM temporal layers", "original image MODEL"],
    ),
    "layers for another UNet": (
        lambda files: {"1": loader(), "2": patcher(["1", 0], files[1]), "3": keyframes(["2", 0]), "4": capture(["3", 0], key("x"))},
        "VLDM_TemporalUNetPatcher", [SD2_LAYERS, "built for SD2.x (context 1024", "this MODEL is SD1.x (context 768"],
    ),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_errors_reach_the_client(comfy, layer_files, case):
    build, node_type, phrases = ERRORS[case]
    result = comfy.run(build(layer_files))
    assert not result.events("execution_success")
    error = result.error
    assert error["node_type"] == node_type
    for phrase in phrases:
        assert phrase in error["exception_message"], error["exception_message"]


def test_memory_reservation_counts_the_temporal_activations(bridge, layer_files, tiny_model, sample, monkeypatch):
    import comfy.model_management as mm

    reserved = []
    real = mm.load_models_gpu
    monkeypatch.setattr(mm, "load_models_gpu", lambda models, memory_required=0, *a, **k: reserved.append(memory_required) or real(models, memory_required, *a, **k))
    image = tiny_model(seed=4)
    sample(image)
    sample(trained_video_model(bridge, image, layer_files))
    image_bytes, video_bytes = reserved
    assert video_bytes == pytest.approx(image_bytes * bridge.TEMPORAL_ACTIVATION_FACTOR, rel=0.05)


def test_keyframe_sampler_reports_progress_per_step(comfy, layer_files):
    from comfy import utils as comfy_utils

    updates, harness_hook = [], comfy_utils.PROGRESS_BAR_HOOK
    comfy_utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None, **kw: updates.append((node_id, value, total)))
    try:
        result = comfy.run({"1": loader(seed=3), "2": patcher(["1", 0], layer_files[0]), "3": keyframes(["2", 0]), "4": capture(["3", 0], key("progress"))})
    finally:
        comfy_utils.set_progress_bar_global_hook(harness_hook)  # later tests read progress through the harness's hook
    assert result.ok, result.messages
    assert [(value, total) for _, value, total in updates] == [(step, STEPS) for step in range(1, STEPS + 1)]


def test_cancel_stops_sampling_inside_the_temporal_layers(comfy, bridge, layer_files, tiny_model, sample, monkeypatch):
    import comfy.model_management as mm

    video_model = trained_video_model(bridge, tiny_model(seed=5), layer_files)
    calls = []
    real_forward = comfy.module("vldm_core.temporal").TemporalLayer.__call__

    def cancel_on_first_temporal_layer(layer, *args, **kwargs):
        calls.append(layer)
        mm.interrupt_current_processing(True)  # the user presses Cancel while the video layers run
        return real_forward(layer, *args, **kwargs)

    monkeypatch.setattr(comfy.module("vldm_core.temporal").TemporalLayer, "__call__", cancel_on_first_temporal_layer)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            sample(video_model)
    finally:
        mm.interrupt_current_processing(False)
    assert len(calls) == 1, "sampling must stop at the next layer, not finish the step"


# ------------------------------------------------------- the nodes as users see them

# Workflows store a node by its ID (class_type in the API format, type in the
# UI format): renaming or removing one breaks every workflow shared with it.
NODE_IDS = {
    "VLDM_BundleLoader",
    "VLDM_BundleUpscalerLoader",
    "VLDM_TemporalUNetPatcher",
    "VLDM_KeyframeSampler",
    "VLDM_MaskedPredictor",
    "VLDM_Interpolator4x",
    "VLDM_TemporalVAEDecode",
    "VLDM_VideoUpscaler",
}
MENU = "Video LDM"
# Rates a frame_rate widget must take as typed: the paper's key frames (1.875 fps,
# x4 -> 7.5, x16 -> 30), the bundled model's (2) and the NTSC rates.
FRAME_RATES = (1.875, 2.0, 7.5, 23.976, 29.97, 30.0)


def pack_node_classes(comfy):
    """The pack's node classes as ComfyUI registered them (the test-only VLDMTest_ nodes left out)."""
    return {node_id: cls for node_id, cls in comfy.nodes.NODE_CLASS_MAPPINGS.items() if node_id.startswith("VLDM_")}


def node_class(comfy, node_id):
    classes = pack_node_classes(comfy)
    if node_id not in classes:
        pytest.fail(f"{node_id} is not registered (see test_node_ids_are_stable)")
    return classes[node_id]


def node_info(comfy, node_id):
    """What ComfyUI's /object_info sends the frontend for the node."""
    return node_class(comfy, node_id).GET_NODE_INFO_V1()


def input_specs(comfy, node_id):
    """(name, type, options) of every required and optional input, as the workflows lay them out."""
    return [(name, "COMBO" if isinstance(kind, list) else kind, options)
            for name, kind, options, _ in input_definitions(node_class(comfy, node_id))]


def frontend_float(value, options):
    """A FLOAT widget's value after the frontend's rounding (comfyui-frontend's
    useFloatWidget / onFloatValueChange with the default settings): to the
    decimals of `step`, or to `round` where the node sets it, but never to more
    decimals than `step` has."""
    step = options.get("step", 0.5)
    decimals = max(0, -math.floor(math.log10(step)))
    unit = options.get("round") or 10.0**-decimals
    return round(round(value / unit) * unit, decimals)


def test_node_ids_are_stable(comfy):
    registered = set(pack_node_classes(comfy))
    assert registered == NODE_IDS, (
        f"the pack's node IDs changed (added {sorted(registered - NODE_IDS)}, gone {sorted(NODE_IDS - registered)}): "
        "workflows store nodes by ID, so shared workflows using a renamed or removed ID no longer load. "
        "Keep the old IDs; list a new node here."
    )
    listed = asyncio.run(comfy.module("nodes").VideoLDMExtension().get_node_list())
    assert {cls.GET_SCHEMA().node_id for cls in listed} == NODE_IDS
    for node_id, cls in pack_node_classes(comfy).items():
        assert cls.GET_SCHEMA().node_id == node_id


@pytest.mark.parametrize("node_id", sorted(NODE_IDS))
def test_node_is_named_described_and_in_the_menu(comfy, node_id):
    info = node_info(comfy, node_id)
    assert info["name"] == node_id
    assert info["display_name"] and info["display_name"].strip() and info["display_name"] != node_id, "set a display_name for the node"
    assert comfy.nodes.NODE_DISPLAY_NAME_MAPPINGS[node_id] == info["display_name"]
    assert info["description"] and len(info["description"].split()) >= 5, "give the node a description (shown when hovering over it)"
    assert info["category"] == MENU or info["category"].startswith(MENU + "/"), f"category {info['category']!r}: put every node of the pack under the {MENU!r} menu"


@pytest.mark.parametrize("node_id", sorted(NODE_IDS))
def test_every_input_and_output_has_a_tooltip_and_every_output_a_name(comfy, node_id):
    info = node_info(comfy, node_id)
    inputs = input_specs(comfy, node_id)
    assert inputs, "a node of the pack without inputs?"
    untipped = [name for name, _, options in inputs if not (options.get("tooltip") or "").strip()]
    assert not untipped, f"{node_id}: inputs without a tooltip: {untipped}"

    schema = node_class(comfy, node_id).GET_SCHEMA()
    assert schema.outputs, f"{node_id} has no outputs"
    assert len(info["output_name"]) == len(info["output_tooltips"]) == len(schema.outputs)
    for output, name, tooltip in zip(schema.outputs, info["output_name"], info["output_tooltips"]):
        assert output.display_name and name == output.display_name, f"{node_id}: name the {output.io_type} output (display_name=)"
        assert tooltip and tooltip.strip(), f"{node_id}: the {name} output has no tooltip"


@pytest.mark.parametrize("node_id", sorted(NODE_IDS))
def test_numeric_inputs_have_sensible_ranges_and_steps(comfy, node_id):
    for name, kind, options in input_specs(comfy, node_id):
        where = f"{node_id}.{name}"
        if kind == "COMBO":
            choices = options.get("options", [])
            if "default" in options:
                assert options["default"] in choices, f"{where}: default {options['default']!r} is not one of its options"
            continue
        if kind not in ("INT", "FLOAT"):
            continue
        assert {"default", "min", "max"} <= set(options), f"{where}: give it a default, min and max"
        low, high, default = options["min"], options["max"], options["default"]
        assert low < high, f"{where}: min {low} is not below max {high}"
        assert low <= default <= high, f"{where}: default {default} outside [{low}, {high}]"
        step = options.get("step")
        if step is not None:
            assert 0 < step <= high - low, f"{where}: step {step} for the range [{low}, {high}]"
        if kind == "INT":
            assert all(isinstance(v, int) for v in (low, high, default)), f"{where}: an INT with non-integer min/max/default"
            if step is not None:
                assert isinstance(step, int), f"{where}: step {step}"
                # the frontend snaps an INT widget to min + k * step
                assert (default - low) % step == 0, f"{where}: default {default} is not min {low} plus a multiple of step {step}"
        else:
            assert frontend_float(default, options) == pytest.approx(default, abs=1e-12), f"{where}: the frontend rounds the default {default} (step {step})"
            assert options.get("round") is None or options["round"] > 0, where
            if name == "frame_rate":
                kept = {rate: frontend_float(rate, options) for rate in FRAME_RATES}
                assert all(kept[rate] == pytest.approx(rate) for rate in FRAME_RATES), f"{where}: the frontend rounds typed frame rates: {kept}"


SAMPLER_SETTINGS = {"seed", "steps", "cfg", "sampler_name", "scheduler"}  # the README says "sampler settings" for them


@pytest.mark.parametrize("node_id", sorted(NODE_IDS))
def test_readme_documents_the_node_and_its_inputs(comfy, node_id):
    with open(os.path.join(os.path.dirname(__file__), "..", "..", "README.md")) as f:
        rows = [line for line in f if line.startswith("|") and f"(`{node_id}`)" in line]
    assert len(rows) == 1, f"README's node table has no row for {node_id}"
    names = {name for name, _, _ in input_specs(comfy, node_id)}
    undocumented = {name for name in names if f"`{name}`" not in rows[0]}
    if "sampler settings" in rows[0]:
        undocumented -= SAMPLER_SETTINGS
    assert not undocumented, f"README's row for {node_id} leaves out {sorted(undocumented)}"
