"""Runs the pack inside a real ComfyUI (found through COMFYUI_PATH) on the CPU.

ComfyUI is imported once per test session, in this process: ``--cpu`` is set
before ``comfy.model_management`` loads, the pack is loaded the way ComfyUI
loads any custom node (from a ``custom_nodes`` folder), and prompts run through
``execution.validate_prompt`` and one ``PromptExecutor`` with ComfyUI's default
(CLASSIC) cache, kept across prompts as a running server keeps it.

Test-only nodes stand in for the parts a test cannot ship (a checkpoint, a
text encoder, a way to read a result back):

* ``VLDMTest_TinyModel``: a tiny random SD1.x-layout MODEL (a real
  ``comfy.model_base.BaseModel`` in a ``ModelPatcher``) and two CONDITIONINGs;
* ``VLDMTest_TinyUpscaler``: the same for a tiny random SD x4 upscaler
  (``comfy.model_base.SD_X4Upscaler``), with 1024-wide CONDITIONINGs;
* ``VLDMTest_Image``: an IMAGE of random values of any shape;
* ``VLDMTest_Latent``: a LATENT of any shape (zeros), optionally with a
  frame rate and a noise mask, for inputs no tiny model makes;
* ``VLDMTest_CaptureLatent``: an output node that stores its LATENT's samples
  in ``Comfy.captured[key]`` and the whole LATENT in ``Comfy.latents[key]``.

Progress bars report to the ServerStub as ``progress`` messages, as ComfyUI's
server hook sends them.
"""

import asyncio
import os
import sys
import tempfile
import uuid

import pytest

from cpu_comfyui import PACK_NAME, tolerate_missing_torchvision_ops
from shipped_workflows import place_downloads

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COMFYUI_PATH = os.environ.get("COMFYUI_PATH", "")
CLIENT_ID = "vldm-tests"

HAVE_COMFYUI = os.path.isfile(os.path.join(COMFYUI_PATH, "comfy", "model_management.py"))


def pytest_collection_modifyitems(config, items):
    """Without a ComfyUI every test here is skipped, saying why (also when a file is named on the command line)."""
    if HAVE_COMFYUI:
        return
    here = os.path.dirname(os.path.abspath(__file__))
    skip = pytest.mark.skip(reason=f"COMFYUI_PATH={COMFYUI_PATH!r} is not a ComfyUI checkout: point it at one (0.8.0 or later) to run the integration tests")
    for item in items:
        if str(item.path).startswith(here + os.sep):
            item.add_marker(skip)


class ServerStub:
    """What PromptExecutor needs of a PromptServer: it records the messages."""

    def __init__(self):
        self.client_id = None
        self.last_node_id = None
        self.messages = []

    def send_sync(self, event, data, sid=None):
        self.messages.append((event, data))


# ---------------------------------------------------------------- tiny models

TINY_UNET = dict(
    model_channels=32, channel_mult=[1, 2], num_res_blocks=[1, 1], transformer_depth=[1, 1], transformer_depth_output=[1, 1, 1, 1],
    transformer_depth_middle=1, in_channels=4, out_channels=4, num_heads=2, num_head_channels=-1, use_linear_in_transformer=False,
    adm_in_channels=None, use_temporal_attention=False, image_size=32, use_spatial_transformer=True, legacy=False,
)
# SD 1.5's own layout (four levels, attention on the first three, two ResBlocks a level) at 32 channels:
# what AnimateDiff's motion modules fit. Its latents need 8 x 8 pixels or more.
TINY_SD15_UNET = dict(
    TINY_UNET, channel_mult=[1, 2, 4, 4], num_res_blocks=[2, 2, 2, 2], transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0],
    transformer_depth_output=[1] * 9 + [0] * 3, num_heads=8,
)
LAYOUTS = {"tiny": TINY_UNET, "sd1.5": TINY_SD15_UNET}
TOKENS = 7


def tiny_model(context_dim=768, seed=0, layout="tiny"):
    """A random image MODEL of an SD 1.x layout (LAYOUTS: "tiny" has 15 Video LDM
    temporal sites, "sd1.5" is SD 1.5's), small enough for the CPU."""
    import comfy.model_base
    import comfy.supported_models

    config = comfy.supported_models.SD15(dict(LAYOUTS[layout], context_dim=context_dim))
    return random_weights(comfy.model_base.BaseModel(config, device="cpu"), seed)


def tiny_upscaler(seed=0):
    """A random SD x4 upscaler MODEL (``comfy.model_base.SD_X4Upscaler``: 7 input
    channels, the noise level as class label, v-prediction, context 1024) with
    the tiny model's channels."""
    import comfy.model_base
    import comfy.supported_models

    config = comfy.supported_models.SD_X4Upscaler(dict(TINY_UNET, in_channels=7, context_dim=1024, use_linear_in_transformer=True))
    config.unet_config["disable_self_attentions"] = [True, False]  # per level; the real one's first levels cross-attend only, too
    return random_weights(comfy.model_base.SD_X4Upscaler(config, device="cpu"), seed)


def random_weights(model, seed):
    """``model`` with random weights, in eval mode, in a CPU ModelPatcher."""
    import comfy.model_patcher
    import torch

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for p in model.parameters():
            torch.nn.init.normal_(p, std=0.05)
    model.eval()
    return comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))


def tiny_conds(context_dim=768, seed=0):
    """(positive, negative) CONDITIONINGs as a text encoder would give them."""
    import torch

    g = torch.Generator().manual_seed(seed + 1000)
    positive = [[torch.randn(1, TOKENS, context_dim, generator=g), {}]]
    negative = [[torch.randn(1, TOKENS, context_dim, generator=g) * 0.1, {}]]
    return positive, negative


class TinyModelLoader:
    """Test-only loader: stands in for a checkpoint loader plus CLIP Text Encode."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "seed": ("INT", {"default": 0, "min": 0, "max": 2**31}),
            "context_dim": ("INT", {"default": 768, "min": 8, "max": 4096}),
        }, "optional": {"layout": (list(LAYOUTS), {"default": "tiny"})}}

    RETURN_TYPES = ("MODEL", "CONDITIONING", "CONDITIONING")
    RETURN_NAMES = ("model", "positive", "negative")
    FUNCTION = "load"
    CATEGORY = "testing"

    def load(self, seed, context_dim, layout="tiny"):
        return (tiny_model(context_dim, seed, layout), *tiny_conds(context_dim, seed))


class TinyUpscalerLoader:
    """Test-only loader: a tiny random SD x4 upscaler and two 1024-wide CONDITIONINGs."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0, "min": 0, "max": 2**31})}}

    RETURN_TYPES = ("MODEL", "CONDITIONING", "CONDITIONING")
    RETURN_NAMES = ("model", "positive", "negative")
    FUNCTION = "load"
    CATEGORY = "testing"

    def load(self, seed):
        return (tiny_upscaler(seed), *tiny_conds(1024, seed))


class ImageOfShape:
    """Test-only source: an IMAGE of uniform random values of the given shape, e.g.
    "4,16,16,3"; ``vary_frame`` >= 0 draws that frame from another seed."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "shape": ("STRING", {"default": "4,16,16,3"}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 2**31}),
            "vary_frame": ("INT", {"default": -1, "min": -1, "max": 4096}),
        }}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "make"
    CATEGORY = "testing"

    def make(self, shape, seed, vary_frame):
        import torch

        shape = [int(n) for n in shape.split(",")]
        image = torch.rand(shape, generator=torch.Generator().manual_seed(seed))
        if vary_frame >= 0:
            image[vary_frame] = torch.rand(shape, generator=torch.Generator().manual_seed(seed + 1))[vary_frame]
        return (image,)


class CaptureLatent:
    """Test-only output node: keeps the LATENT it gets in ``CaptureLatent.captured[key]``."""

    captured = {}

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",), "key": ("STRING", {"default": "out"})}}

    RETURN_TYPES = ()
    FUNCTION = "capture"
    OUTPUT_NODE = True
    CATEGORY = "testing"

    latents = {}

    def capture(self, samples, key):
        CaptureLatent.captured[key] = samples["samples"].clone()
        CaptureLatent.latents[key] = {**samples, "samples": CaptureLatent.captured[key]}
        return {}


class LatentOfShape:
    """Test-only source: a LATENT of zeros of the given shape, e.g. "1,16,4,4,4"."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "shape": ("STRING", {"default": "4,4,4,4"}),
            "frame_rate": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 240.0, "tooltip": "0: no frame_rate entry"}),
            "noise_mask": ("BOOLEAN", {"default": False}),
        }}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "make"
    CATEGORY = "testing"

    def make(self, shape, frame_rate, noise_mask):
        import torch

        samples = torch.zeros([int(n) for n in shape.split(",")])
        latent = {"samples": samples}
        if frame_rate:
            latent["frame_rate"] = frame_rate
        if noise_mask:
            latent["noise_mask"] = torch.ones(samples.shape[0], 1, *samples.shape[2:])
        return (latent,)


TEST_NODES = {
    "VLDMTest_TinyModel": TinyModelLoader, "VLDMTest_CaptureLatent": CaptureLatent, "VLDMTest_Latent": LatentOfShape,
    "VLDMTest_TinyUpscaler": TinyUpscalerLoader, "VLDMTest_Image": ImageOfShape,
}


class RunResult:
    def __init__(self, messages):
        self.messages = messages

    def events(self, name):
        return [data for event, data in self.messages if event == name]

    @property
    def ok(self):
        return bool(self.events("execution_success")) and not self.events("execution_error")

    @property
    def error(self):
        """The one execution_error message's data (node_type, exception_message, ...)."""
        errors = self.events("execution_error")
        assert len(errors) == 1, f"expected one execution_error, got messages {[e for e, _ in self.messages]}"
        return errors[0]

    @property
    def cached_nodes(self):
        return set(self.events("execution_cached")[0]["nodes"])


class Comfy:
    def __init__(self):
        sys.path.insert(0, COMFYUI_PATH)
        tolerate_missing_torchvision_ops()
        import torch

        # The test tensors are tiny: intra-op threads only cost here, and on a shared
        # 2-core machine their spin-waits make sampling 10-100x slower under load.
        torch.set_num_threads(1)
        import comfy.cli_args

        comfy.cli_args.args.cpu = True
        comfy.cli_args.args.disable_all_custom_nodes = False
        # ComfyUI's utils package, imported before nodes.py puts comfy/ (with its utils.py) first
        # on sys.path, as main.py does; the server module, which Save Video's neighbours import, needs it.
        import utils.install_util  # noqa: F401
        import execution
        import folder_paths
        import nodes

        self.nodes, self.execution, self.folder_paths = nodes, execution, folder_paths
        self.root = tempfile.mkdtemp(prefix="vldm-comfy-")
        folder_paths.set_output_directory(os.path.join(self.root, "output"))
        folder_paths.set_temp_directory(os.path.join(self.root, "temp"))
        folder_paths.models_dir = os.path.join(self.root, "models")
        folder_paths.add_model_folder_path("checkpoints", os.path.join(folder_paths.models_dir, "checkpoints"), is_default=True)
        place_downloads(folder_paths.models_dir)
        custom_nodes = os.path.join(self.root, "custom_nodes")
        os.makedirs(custom_nodes)
        self.pack_dir = os.path.join(custom_nodes, PACK_NAME)
        os.symlink(REPO, self.pack_dir)
        # The comfy_extras nodes (Save Video, Create Video, ...) that the shipped workflows use, as a server loads them.
        asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
        self.loaded = asyncio.run(nodes.load_custom_node(self.pack_dir))
        self.add_nodes(TEST_NODES)
        # One executor for the session, as ComfyUI's prompt worker has, with its default cache.
        self.server = ServerStub()
        self.executor = execution.PromptExecutor(self.server, cache_type=execution.CacheType.CLASSIC, cache_args={"lru": 0, "ram": 0})
        self.captured, self.latents = CaptureLatent.captured, CaptureLatent.latents
        import comfy.utils
        from comfy_execution.utils import get_executing_context

        def progress(value, total, preview, prompt_id=None, node_id=None):
            context = get_executing_context()
            node_id = node_id or (context.node_id if context else None)
            self.server.send_sync("progress", {"value": value, "max": total, "node": node_id})

        comfy.utils.set_progress_bar_global_hook(progress)

    tiny_model = staticmethod(tiny_model)
    random_weights = staticmethod(random_weights)
    TINY_UNET = TINY_UNET
    tiny_upscaler = staticmethod(tiny_upscaler)
    tiny_conds = staticmethod(tiny_conds)

    def add_nodes(self, mapping):
        self.nodes.NODE_CLASS_MAPPINGS.update(mapping)

    def module(self, name):
        """The pack's own loaded module ``name`` (e.g. "nodes.comfy_bridge"): ComfyUI
        names a custom node package after its path, so its modules are not importable by name."""
        import importlib

        return importlib.import_module(f"{self.pack_dir.replace('.', '_x_')}.{name}")

    @property
    def temporal_layers_dir(self):
        return self.folder_paths.get_folder_paths("temporal_layers")[0]

    def save_trained_looking_layers(self, name, train_frames, modes, seed=0, model=None, **config):
        """A temporal-layer file in the registered folder for ``model`` (default: the
        tiny model), every weight moved off its initial value as training would
        (so the layers act)."""
        import torch

        temporal = self.module("vldm_core.temporal")
        bridge = self.module("nodes.comfy_bridge")
        model = model or tiny_model()
        layout = self.module("vldm_core.unet_layout").find_layout(bridge.unet_of(model))
        layers = temporal.TemporalLayers(layout, temporal.TemporalConfig(**config))
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in layers.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
        self.module("vldm_core.weights").save_temporal_layers(
            layers, os.path.join(self.temporal_layers_dir, name), train_frames=train_frames, modes=modes, prediction_type=bridge.prediction_type(model), overwrite=True
        )
        return name

    def run(self, prompt):
        """Validate and execute an API-format prompt on the session's executor, as
        a client with an id does; returns a RunResult of the messages sent to it."""
        prompt_id = str(uuid.uuid4())
        valid = asyncio.run(self.execution.validate_prompt(prompt_id, prompt, None))
        if not valid[0]:
            raise AssertionError(f"prompt invalid: {valid[1]} {valid[3]}")
        self.server.messages = []
        self.executor.execute(prompt, prompt_id, {"client_id": CLIENT_ID}, valid[2])
        return RunResult(list(self.server.messages))


@pytest.fixture(scope="session")
def comfy():
    return Comfy()
