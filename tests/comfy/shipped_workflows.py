"""The workflows the pack ships (``workflows/*.json``, ComfyUI's UI format), built
from the small graphs below against the node definitions of a real ComfyUI, and
read back as API prompts the way the frontend's "Queue" turns them into one.

The JSON files are generated so that their widget values always line up with
the nodes' inputs; ``test_workflows.py`` fails when they no longer match and
rewrites them with ``VLDM_WRITE_WORKFLOWS=1``. Every graph runs on the bundled
model as it is; its note says how to swap in an SD checkpoint.
"""

import dataclasses
import json
import os
import uuid

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FOLDER = os.path.join(REPO, "workflows")

BUNDLE = "videoldm-shapes"
LAYERS = {part: f"{BUNDLE}-{part}.safetensors" for part in ("keyframe", "interpolation", "upscaler")}
DECODER = f"{BUNDLE}-decoder.safetensors"
NO_DECODER = "none (the VAE's own decoder)"
PROMPT = "a red circle and a blue square"
SAMPLING = dict(seed=0, steps=20, cfg=5.0, sampler_name="euler", scheduler="normal")
UPSCALING = dict(seed=0, steps=10, cfg=3.0, sampler_name="euler", scheduler="normal")
FRONTEND_ONLY = {"MarkdownNote", "Note"}  # drawn by the frontend, never sent to the server


@dataclasses.dataclass
class Node:
    """One node of a graph, drawn in ``column`` of ``band`` (a row of columns): ``inputs``
    maps an input name to a widget value, or to ``(node key, output name)`` for a link."""

    key: str
    type: str
    column: int
    band: int = 0
    inputs: dict = dataclasses.field(default_factory=dict)
    title: str | None = None


def link(key, output):
    return (key, output)


def node(key, type, at, title=None, **inputs):
    column, band = at
    return Node(key, type, column, band, inputs, title)


# ------------------------------------------------------------------ the graphs


def image_model(title=None):
    """The bundle's image model with its caption encoder: the part a user swaps for Load Checkpoint."""
    return [
        node("loader", "VLDM_BundleLoader", (1, 0), title, bundle=BUNDLE),
        node("positive", "CLIPTextEncode", (1, 0), "Positive prompt", text=PROMPT, clip=link("loader", "CLIP")),
        node("negative", "CLIPTextEncode", (1, 0), "Negative prompt", text="", clip=link("loader", "CLIP")),
    ]


def patched(key, layers, title):
    return node(key, "VLDM_TemporalUNetPatcher", (2, 0), title, model=link("loader", "MODEL"), temporal_layers=layers, scale=1.0)


def conditioned(model, **inputs):
    return dict(model=link(model, "MODEL"), positive=link("positive", "CONDITIONING"), negative=link("negative", "CONDITIONING"), **inputs)


def key_frames(title="Key-frame layers"):
    """8 key frames at the bundle's 2 fps and 32x32: what its key-frame layers were trained on."""
    return [
        patched("keyframe_model", LAYERS["keyframe"], title),
        node("key_frames", "VLDM_KeyframeSampler", (3, 0), **conditioned("keyframe_model", frames=8, width=32, height=32, frame_rate=2.0, **SAMPLING)),
    ]


def rollout(at):
    """3 segments of 6 new frames, each continuing from the last 2: 26 key frames."""
    return node("rollout", "VLDM_MaskedPredictor", at, **conditioned("keyframe_model", video=link("key_frames", "LATENT"), segments=3,
                                                                     context_frames=2, context_guidance=1.5, **SAMPLING))


INTERPOLATION_LAYERS = patched("interpolation_model", LAYERS["interpolation"], "Interpolation layers")


def interpolated(key, frames, at, title=None):
    return node(key, "VLDM_Interpolator4x", at, title, **conditioned("interpolation_model", key_frames=frames, multiplier="4", context_guidance=1.5, **SAMPLING))


def saved(key, video, prefix, at, format="auto", codec="auto"):
    return node(key, "SaveVideo", at, video=video, filename_prefix=f"videoldm/{prefix}", format=format, codec=codec)


def temporal_decode(key, samples, decoder, at, title=None):
    return node(key, "VLDM_TemporalVAEDecode", at, title, vae=link("loader", "VAE"), samples=samples, temporal_decoder=decoder,
                window_frames=8, window_overlap=2, tile_size=0, tile_overlap=64, frame_rate=8.0)


def decoded_and_saved(key, samples, decoder, prefix, at, title=None):
    """Temporal VAE Decode at ``at`` and a Save Video of its VIDEO in the next column."""
    column, band = at
    return [temporal_decode(key, samples, decoder, at, title), saved(f"save_{key}", link(key, "VIDEO"), prefix, (column + 1, band))]


def upscaled(images, frame_rate, band=1):
    """The bundle's video upscaler, columns 1-4 of ``band``: 32 px -> 128 px frames, with its own caption encoder and VAE."""
    return [
        node("upscaler_loader", "VLDM_BundleUpscalerLoader", (1, band), bundle=BUNDLE),
        node("upscaler_positive", "CLIPTextEncode", (1, band), "Upscaler positive prompt", text=PROMPT, clip=link("upscaler_loader", "CLIP")),
        node("upscaler_negative", "CLIPTextEncode", (1, band), "Upscaler negative prompt", text="", clip=link("upscaler_loader", "CLIP")),
        node("upscaler_model", "VLDM_TemporalUNetPatcher", (2, band), "Upscaler temporal layers", model=link("upscaler_loader", "MODEL"), temporal_layers=LAYERS["upscaler"],
             scale=1.0),
        node("upscale", "VLDM_VideoUpscaler", (3, band), model=link("upscaler_model", "MODEL"), positive=link("upscaler_positive", "CONDITIONING"),
             negative=link("upscaler_negative", "CONDITIONING"), images=images, noise_augmentation=0.1, tile_size=128, tile_overlap=32,
             window_frames=0, window_overlap=2, **UPSCALING, frame_rate=frame_rate),
        node("upscaled_frames", "VAEDecode", (4, band), samples=link("upscale", "LATENT"), vae=link("upscaler_loader", "VAE")),
        node("upscaled_video", "CreateVideo", (4, band), images=link("upscaled_frames", "IMAGE"), fps=frame_rate),
    ]


SWAP = """
**Your own SD checkpoint.** Replace *Load Video LDM Bundle* by *Load Checkpoint* (an SD 1.x or 2.x model, a fine-tune or \
DreamBooth of it included) and wire its MODEL, CLIP and VAE to the same inputs. Then {parts}; set width and height to the \
size the layers were trained at (e.g. 512 x 320), and frames and frame_rate to what the layer file was trained on. \
Files go in `models/temporal_layers` and `models/temporal_decoders`; `python -m vldm_core.train` makes them."""


def note(title, text, parts="choose a temporal-layer file trained for SD in the Temporal UNet Patcher"):
    return node("note", "MarkdownNote", (0, 0), "About this workflow", text=f"## {title}\n\n{text}\n{SWAP.format(parts=parts)}")


MOTION_MODULE = "mm_sd_v15_v2.safetensors"
SD15_CHECKPOINT = "v1-5-pruned-emaonly.safetensors"
# Workflows for files a user downloads: {name: {model folder: [file names]}}. The tests put empty
# stand-ins there so the workflow validates and opens; its nodes run in test_motion_modules.py.
DOWNLOADS = {"8_animatediff_motion_module": {"checkpoints": [SD15_CHECKPOINT], "animatediff_models": [MOTION_MODULE]}}


def place_downloads(models_dir):
    """Empty stand-ins for the DOWNLOADS files under ``models_dir`` (a real file is never replaced)."""
    for folders in DOWNLOADS.values():
        for folder, names in folders.items():
            os.makedirs(os.path.join(models_dir, folder), exist_ok=True)
            for name in names:
                open(os.path.join(models_dir, folder, name), "a").close()


MOTION_NOTE = f"""## Text to video with an AnimateDiff motion module

An AnimateDiff motion module is a set of temporal layers trained once on SD 1.5: the Temporal UNet Patcher inserts it into \
any SD 1.5 checkpoint (fine-tunes and DreamBooths included), and the Keyframe Sampler denoises 16 frames jointly \
(2 seconds at 8 fps). `scale` is the motion strength: 1 as trained, 0 the image model.

**Files.** Put the checkpoint (`{SD15_CHECKPOINT}`, or any SD 1.5 model) in `models/checkpoints` and the motion module \
(`{MOTION_MODULE}`, `mm_sd_v15.safetensors`, or v3's `v3_sd15_mm.safetensors`) in `models/animatediff_models` \
(AnimateDiff-Evolved's folder, shared) or `models/temporal_layers`. A `.ckpt` is never opened: the patcher's message \
gives the one-line conversion to `.safetensors`.

**Longer or denser video.** v1 modules take up to 24 frames, v2 and v3 up to 32. The Masked Predictor and the 4x \
Interpolator need a context branch trained on top of the module: see the README's "Use AnimateDiff motion modules"."""


GRAPHS = {
    "1_text_to_video_key_frames": [
        note("Text to video: key frames",
             "The Temporal UNet Patcher inserts the bundle's key-frame layers into its image model; the Keyframe Sampler "
             "denoises 8 frames jointly (4 seconds at 2 fps), so they show the same objects moving. Core VAE Decode, "
             "Create Video and Save Video make the mp4."),
        *image_model(),
        *key_frames(),
        node("frames", "VAEDecode", (4, 0), samples=link("key_frames", "LATENT"), vae=link("loader", "VAE")),
        node("video", "CreateVideo", (4, 0), images=link("frames", "IMAGE"), fps=2.0),
        saved("save", link("video", "VIDEO"), "key_frames", (5, 0)),
    ],
    "2_long_video_masked_predictor": [
        note("Long video: masked-context prediction",
             "After 8 key frames, the Masked Predictor adds 3 segments of 6 frames, each continuing from the last 2 frames "
             "of the video so far (context guidance 1.5 keeps it close to them): 26 key frames, 13 seconds at 2 fps. "
             "Raise `segments` for longer videos; memory does not grow with them."),
        *image_model(),
        *key_frames(),
        rollout((4, 0)),
        *decoded_and_saved("frames", link("rollout", "LATENT"), NO_DECODER, "long_video", (3, 1)),
    ],
    "3_interpolation_4x_16x": [
        note("Key frames -> 4x -> 16x interpolation",
             "The 4x Interpolator fills 3 frames between each pair of key frames (8 -> 29 frames, 2 -> 8 fps); a second "
             "pass makes 113 frames at 32 fps. Key frames stay where they are. (One Interpolator with multiplier 16 "
             "does both passes.)",
             "choose temporal-layer files trained for SD: key-frame layers in the first patcher, interpolation layers in the second"),
        *image_model(),
        *key_frames(),
        INTERPOLATION_LAYERS,
        interpolated("interpolated_4x", link("key_frames", "LATENT"), (4, 0), "4x Interpolator (2 -> 8 fps)"),
        interpolated("interpolated_16x", link("interpolated_4x", "LATENT"), (5, 0), "4x Interpolator (8 -> 32 fps)"),
        *decoded_and_saved("frames_4x", link("interpolated_4x", "LATENT"), DECODER, "interpolated_4x", (2, 1), "Temporal VAE Decode (8 fps)"),
        *decoded_and_saved("frames_16x", link("interpolated_16x", "LATENT"), DECODER, "interpolated_16x", (4, 1), "Temporal VAE Decode (32 fps)"),
    ],
    "4_temporal_vae_decode": [
        note("Temporal VAE decode",
             "The same interpolated latents decoded twice: by the VAE's own decoder, frame by frame, and with the bundle's "
             "temporal decoder, which sees 8 neighbouring frames at once (windows overlap by 2 and are blended). "
             "Compare the two videos.",
             "choose temporal-layer files trained for SD, and in Temporal VAE Decode a temporal decoder trained for SD's KL-f8 VAE"),
        *image_model(),
        *key_frames(),
        INTERPOLATION_LAYERS,
        interpolated("interpolated", link("key_frames", "LATENT"), (4, 0)),
        *decoded_and_saved("temporal", link("interpolated", "LATENT"), DECODER, "temporal_decoder", (2, 1), "Temporal VAE Decode (temporal decoder)"),
        *decoded_and_saved("frame_by_frame", link("interpolated", "LATENT"), NO_DECODER, "frame_by_frame", (4, 1), "Temporal VAE Decode (the VAE's own decoder)"),
    ],
    "5_video_upscale": [
        note("Video upscale",
             "8 key frames at 32 x 32 go through the bundle's video upscaler: an x4-style upscaler UNet with temporal layers, "
             "run on windows of frames so neighbouring frames agree. Its VAE decodes the result to 128 x 128.",
             "choose a temporal-layer file trained for SD, and for the upscaler load `x4-upscaler-ema.safetensors` with "
             "Load Checkpoint and patch it with upscaler temporal layers"),
        *image_model(),
        *key_frames(),
        node("frames", "VAEDecode", (4, 0), samples=link("key_frames", "LATENT"), vae=link("loader", "VAE")),
        *upscaled(link("frames", "IMAGE"), frame_rate=2.0),
        saved("save", link("upscaled_video", "VIDEO"), "upscaled", (5, 1)),
    ],
    "6_full_pipeline_mp4": [
        note("The whole Video LDM pipeline, to an mp4",
             "Key frames -> masked-context prediction (26 key frames) -> 4x interpolation (101 frames, 8 fps) -> temporal "
             "VAE decode -> 4x video upscale (128 x 128) -> Save Video as h264 mp4: 12.6 seconds of video, about a minute "
             "on a laptop CPU.",
             "choose SD-trained files in every Temporal UNet Patcher and in Temporal VAE Decode, and load "
             "`x4-upscaler-ema.safetensors` for the upscaler"),
        *image_model(),
        *key_frames(),
        INTERPOLATION_LAYERS,
        rollout((4, 0)),
        interpolated("interpolated", link("rollout", "LATENT"), (5, 0)),
        temporal_decode("frames", link("interpolated", "LATENT"), DECODER, (6, 0)),
        *upscaled(link("frames", "IMAGE"), frame_rate=8.0),
        saved("save", link("upscaled_video", "VIDEO"), "full_pipeline", (5, 1), format="mp4", codec="h264"),
    ],
    "7_own_sd_checkpoint": [
        note("Your own image model + a temporal-layer file",
             "Video LDM needs no video training of your image model: temporal layers trained once on the base model turn "
             "its fine-tunes into video models too. This graph is that recipe. As shipped, the bundle's image model "
             "stands in for your checkpoint, so it runs with nothing downloaded.",
             "choose a temporal-layer file trained for your checkpoint's base model (SD 1.5 layers for SD 1.5 fine-tunes)"),
        *image_model(title="Your image model (swap for Load Checkpoint)"),
        *key_frames(title="Temporal layers for its base model"),
        INTERPOLATION_LAYERS,
        interpolated("interpolated", link("key_frames", "LATENT"), (4, 0)),
        *decoded_and_saved("frames", link("interpolated", "LATENT"), NO_DECODER, "own_checkpoint", (3, 1)),
    ],
    "8_animatediff_motion_module": [
        node("note", "MarkdownNote", (0, 0), "About this workflow", text=MOTION_NOTE),
        node("loader", "CheckpointLoaderSimple", (1, 0), "Load an SD 1.5 checkpoint", ckpt_name=SD15_CHECKPOINT),
        node("positive", "CLIPTextEncode", (1, 0), "Positive prompt", text="a fox running through snowy woods, golden hour, highly detailed", clip=link("loader", "CLIP")),
        node("negative", "CLIPTextEncode", (1, 0), "Negative prompt", text="blurry, low quality, watermark", clip=link("loader", "CLIP")),
        node("motion_model", "VLDM_TemporalUNetPatcher", (2, 0), "AnimateDiff motion module", model=link("loader", "MODEL"), temporal_layers=MOTION_MODULE, scale=1.0),
        node("key_frames", "VLDM_KeyframeSampler", (3, 0), **conditioned("motion_model", frames=16, width=512, height=512, frame_rate=8.0,
                                                                          seed=0, steps=20, cfg=7.5, sampler_name="euler", scheduler="normal")),
        node("frames", "VAEDecode", (4, 0), samples=link("key_frames", "LATENT"), vae=link("loader", "VAE")),
        node("video", "CreateVideo", (4, 0), images=link("frames", "IMAGE"), fps=8.0),
        saved("save", link("video", "VIDEO"), "animatediff", (5, 0)),
    ],
}


# ------------------------------------------------------------------ node definitions


def input_definitions(node_class):
    """[(name, type, options, required)] of a node's inputs in the order the frontend lays them out."""
    spec = node_class.INPUT_TYPES()
    return [(name, definition[0], definition[1] if len(definition) > 1 else {}, part == "required")
            for part in ("required", "optional") for name, definition in spec.get(part, {}).items()]


def is_widget(kind, options):
    return (isinstance(kind, list) or str(kind) in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")) and not options.get("forceInput")


def widget_slots(node_class):
    """The widget inputs in ``widgets_values`` order: (name, occupies two values); a seed
    with control_after_generate stores its "fixed" / "randomize" setting after it."""
    return [(name, bool(options.get("control_after_generate"))) for name, kind, options, _ in input_definitions(node_class) if is_widget(kind, options)]


def outputs(node_class):
    types = [str(t) for t in node_class.RETURN_TYPES]
    names = getattr(node_class, "RETURN_NAMES", None) or types
    return list(zip(names, types))


# ------------------------------------------------------------------ UI format

WIDTH = {"MarkdownNote": 460, "CLIPTextEncode": 380, "VLDM_BundleLoader": 380}
COLUMN_GAP, ROW_GAP, TITLE = 60, 60, 30


def size(graph_node, node_class):
    """Tall enough for every slot and widget, as the frontend draws them."""
    if graph_node.type in FRONTEND_ONLY:
        return [WIDTH[graph_node.type], 420]
    definitions = input_definitions(node_class)
    widgets = [options for _, kind, options, _ in definitions if is_widget(kind, options)]
    rows = max(len(definitions) - len(widgets), len(outputs(node_class)))
    widget_rows = sum(1 + bool(options.get("control_after_generate")) for options in widgets)
    text_boxes = sum(bool(options.get("multiline")) for options in widgets)
    return [WIDTH.get(graph_node.type, 340), 16 + 22 * rows + 26 * widget_rows + 70 * text_boxes]


def positions(graph, sizes):
    """x of each column (as wide as its widest node) and y of each band (below the tallest column of the band above)."""
    column_x, band_y, x, y = {}, {}, 0, TITLE
    for column in sorted({n.column for n in graph}):
        column_x[column] = x
        x += max(sizes[n.key][0] for n in graph if n.column == column) + COLUMN_GAP
    for band in sorted({n.band for n in graph}):
        band_y[band] = y
        stacks = {}
        for n in graph:
            if n.band == band:
                stacks[n.column] = stacks.get(n.column, 0) + sizes[n.key][1] + TITLE + ROW_GAP
        y += max(stacks.values())
    return column_x, band_y


def build(graph, node_classes, name):
    """The UI-format workflow of ``graph``: nodes laid out in their columns, links by id."""
    ids = {n.key: i for i, n in enumerate(graph, start=1)}
    by_key = {n.key: n for n in graph}
    sizes = {n.key: size(n, node_classes.get(n.type)) for n in graph}
    column_x, band_y = positions(graph, sizes)
    links, nodes = [], []
    next_y = {(n.column, n.band): band_y[n.band] for n in graph}
    out_links = {n.key: {} for n in graph}
    execution_order = order(graph)
    for n in graph:
        entry = {"id": ids[n.key], "type": n.type, "pos": [column_x[n.column], next_y[n.column, n.band]], "size": sizes[n.key],
                 "flags": {}, "order": execution_order.index(n.key), "mode": 0, "inputs": [], "outputs": [], "properties": {"Node name for S&R": n.type}}
        next_y[n.column, n.band] += sizes[n.key][1] + TITLE + ROW_GAP
        if n.title:
            entry["title"] = n.title
        if n.type in FRONTEND_ONLY:
            entry["widgets_values"] = [n.inputs["text"]]
            entry["color"], entry["bgcolor"] = "#432", "#653"
            nodes.append(entry)
            continue
        definitions = input_definitions(node_classes[n.type])
        values = []
        for input_name, kind, options, required in definitions:
            if input_name not in n.inputs:
                if required or is_widget(kind, options):  # every shipped value is chosen, not a default by accident
                    raise ValueError(f"{name}: {n.key} ({n.type}) sets no value for {input_name}")
                continue
            value = n.inputs[input_name]
            if is_widget(kind, options):
                values += [value, "fixed"] if options.get("control_after_generate") else [value]
                continue
            source, output = value
            slot = [o for o, _ in outputs(node_classes[by_key[source].type])].index(output)
            link_id = len(links) + 1
            links.append([link_id, ids[source], slot, ids[n.key], len(entry["inputs"]), str(kind)])
            entry["inputs"].append({"name": input_name, "type": str(kind), "link": link_id})
            out_links[source].setdefault(slot, []).append(link_id)
        unknown = set(n.inputs) - {d[0] for d in definitions}
        if unknown:
            raise ValueError(f"{name}: {n.key} ({n.type}) has no input {sorted(unknown)}")
        entry["widgets_values"] = values
        nodes.append(entry)
    for entry, n in zip(nodes, graph):
        if n.type not in FRONTEND_ONLY:
            entry["outputs"] = [{"name": o, "type": t, "links": out_links[n.key].get(slot, []), "slot_index": slot}
                                for slot, (o, t) in enumerate(outputs(node_classes[n.type]))]
    return {
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"comfyui-videoldm/workflows/{name}")), "revision": 0, "last_node_id": len(graph), "last_link_id": len(links),
        "nodes": nodes, "links": links, "groups": [], "config": {}, "extra": {"ds": view(nodes)}, "version": 0.4,
    }


def view(nodes, screen=(1920, 1080), margin=(80, 110)):
    """The canvas zoom and offset that show every node on a 1920 x 1080 screen when the
    workflow opens, clear of the frontend's side bar (left) and menu and Run button (top)."""
    right = max(n["pos"][0] + n["size"][0] for n in nodes)
    bottom = max(n["pos"][1] + n["size"][1] for n in nodes)
    scale = round(min((screen[0] - margin[0] - 40) / right, (screen[1] - margin[1] - 20) / bottom, 1.0), 3)
    return {"scale": scale, "offset": [round(margin[0] / scale), round(margin[1] / scale)]}


def order(graph):
    """Node keys in an order where every node comes after the nodes it reads from."""
    done = []

    def visit(n):
        if n.key in done:
            return
        for value in n.inputs.values():
            if isinstance(value, tuple):
                visit(next(m for m in graph if m.key == value[0]))
        done.append(n.key)

    for n in graph:
        visit(n)
    return done


def to_prompt(workflow, node_classes):
    """The API prompt the frontend queues for a UI-format ``workflow``: widget values by
    input name, links as [node id, output slot]; frontend-only nodes left out."""
    links = {entry[0]: entry for entry in workflow["links"]}
    prompt = {}
    for n in workflow["nodes"]:
        if n["type"] in FRONTEND_ONLY:
            continue
        if n.get("mode", 0) != 0:
            raise ValueError(f"node {n['id']} ({n['type']}) is muted or bypassed: the shipped workflows run every node")
        values = list(n.get("widgets_values", []))
        inputs = {}
        for name, controlled in widget_slots(node_classes[n["type"]]):
            inputs[name] = values.pop(0)
            if controlled:
                values.pop(0)
        if values:
            raise ValueError(f"node {n['id']} ({n['type']}) has {len(values)} widget values no input takes: {values}")
        for socket in n.get("inputs", []):
            if socket.get("link") is not None:
                _, source, slot, *_ = links[socket["link"]]
                inputs[socket["name"]] = [str(source), slot]
        prompt[str(n["id"])] = {"class_type": n["type"], "inputs": inputs}
    return prompt


def path(name):
    return os.path.join(FOLDER, f"{name}.json")


def text(workflow):
    return json.dumps(workflow, indent=1) + "\n"
