"""Load Video LDM Bundle / Load Video LDM Bundle Upscaler: the pack's own model
bundle (vldm_core.pipeline) as ComfyUI's MODEL, CLIP and VAE, wired exactly like
Load Checkpoint's outputs, so every node (core and the pack's) takes them.

* MODEL: a real ``comfy.model_base.BaseModel`` (``SD_X4Upscaler`` for the
  upscaler) whose ComfyUI UNet (openaimodel) carries the bundle's UNet weights:
  the pack's UNet is SD's CompVis layout, so only three key names differ, and
  ComfyUI's own model detection reads its config. ComfyUI's UNet hard-codes
  GroupNorm(32) with eps 1e-5 in its ResBlocks; the pack's UNet normalises with
  its own group count and eps 1e-6 everywhere, so the model gets operations
  whose GroupNorm has those (ComfyUI's ``custom_operations`` route).
* CLIP: a ``comfy.sd.CLIP`` around the bundle's caption encoder
  (vldm_core.text_encoder), with a tokenizer that splits words as it does and
  understands ComfyUI's ``(word:1.2)`` weights.
* VAE: ``comfy.sd.VAE`` building ComfyUI's own AutoencoderKL from the
  autoencoder's config; it works on unscaled latents, the MODEL's latent format
  scales them by the file's ``latent_scale``.

Bundles are folders with a ``bundle.json`` under ComfyUI's ``models/video_ldm``
(and extra_model_paths' ``video_ldm``) or the pack's own ``models`` folder. The
folders holding a bundle's temporal-layer and temporal-decoder files (by
convention its ``temporal_layers/`` and ``temporal_decoders/`` subfolders) join
ComfyUI's ``temporal_layers`` / ``temporal_decoders`` lists, so Temporal UNet
Patcher and Temporal VAE Decode offer them.
"""

import logging
import os
import re

import comfy.latent_formats
import comfy.model_base
import comfy.model_detection
import comfy.model_management
import comfy.model_patcher
import comfy.ops
import comfy.sd
import comfy.supported_models
import comfy.supported_models_base
import folder_paths
import torch
from comfy.sd1_clip import escape_important, token_weights, unescape_important
from comfy_api.latest import io

from ..vldm_core.autoencoder import COMFY_VAE_GROUPS
from ..vldm_core.file_checks import WeightFileError
from ..vldm_core.model_files import load_model
from ..vldm_core.pipeline import BUNDLE, read_bundle
from ..vldm_core.text_encoder import WORD, TextEncoder
from ..vldm_core.train.upscaler_job import MAX_NOISE_LEVEL
from .comfy_bridge import DECODER_FOLDER, FOLDER

BUNDLE_FOLDER = "video_ldm"
PACK_MODELS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models")
LAYER_PARTS = ("keyframe", "prediction", "interpolation", "upscaler_layers")
DECODER_PARTS = ("temporal_decoder",)
IMAGE_PARTS = ("unet", "text_encoder", "autoencoder")
UPSCALER_PARTS = ("upscaler_unet", "text_encoder", "upscaler_autoencoder")
NORM_EPS = 1e-6  # every GroupNorm of the pack's UNet (vldm_core.unet.group_norm)
PREDICTION = {"eps": comfy.model_base.ModelType.EPS, "v": comfy.model_base.ModelType.V_PREDICTION}
# The pack's dtypes: its models train in fp32 / bf16 autocast, fp16's range is not guaranteed.
INFERENCE_DTYPES = [torch.bfloat16, torch.float32]
MAX_DEPTH = 3  # folders below a bundle location searched for bundles (also bounds symlink loops)


# ------------------------------------------------------------------ bundle folders


def register_bundle_folders():
    """models/video_ldm (also from extra_model_paths.yaml) and the pack's own
    models folder as bundle locations, and the temporal files of the bundles there."""
    default = os.path.join(folder_paths.models_dir, BUNDLE_FOLDER)
    paths = folder_paths.folder_names_and_paths.get(BUNDLE_FOLDER, ([], set()))[0]
    for path in (default, PACK_MODELS):
        if path not in paths:
            paths.append(path)
    folder_paths.folder_names_and_paths[BUNDLE_FOLDER] = (paths, {".json"})
    bundle_names()


def bundle_folders():
    """{name: folder} of every folder with a bundle.json under the bundle locations;
    a name is the folder's path below its location ("videoldm-shapes"), the first location wins."""
    found = {}
    for base in folder_paths.get_folder_paths(BUNDLE_FOLDER):
        for root, dirs, files in os.walk(base, followlinks=True):
            dirs.sort()
            name = os.path.relpath(root, base).replace(os.sep, "/")
            if root != base and BUNDLE in files:
                found.setdefault(name, root)
                dirs.clear()  # a bundle's own subfolders hold its files, not more bundles
            elif name.count("/") >= MAX_DEPTH - 1:
                dirs.clear()
    return found


def bundle_names(upscaler=False):
    """The bundles a loader offers (with ``upscaler``: those with an upscaler);
    their temporal files join ComfyUI's lists on the way. A bundle whose
    bundle.json cannot be read is still offered, so that loading it says what is wrong."""
    forget_removed_bundles()
    names = []
    for name, folder in sorted(bundle_folders().items()):
        try:
            files = read_bundle(folder, name)[1]
        except (OSError, ValueError):
            names.append(name)
            continue
        register_temporal_files(name, folder, files)
        if not upscaler or "upscaler_unet" in files:
            names.append(name)
    return names


REGISTERED = set()  # (folder_paths name, folder) that bundles added to ComfyUI's lists
WARNED = set()


def warn_once(message, *args):
    """Bundles are listed whenever ComfyUI asks for the nodes' inputs: say each problem once."""
    if (message, args) not in WARNED:
        WARNED.add((message, args))
        logging.warning(message, *args)


def forget_removed_bundles():
    """Temporal folders of bundles deleted since they were listed leave ComfyUI's
    lists, and its cached listing (which fails on a folder that is gone)."""
    for folder_name, where in sorted(REGISTERED):
        if os.path.isdir(where):
            continue
        REGISTERED.discard((folder_name, where))
        paths = folder_paths.folder_names_and_paths.get(folder_name, ([], set()))[0]
        if where in paths:
            paths.remove(where)
        folder_paths.filename_list_cache.pop(folder_name, None)


def register_temporal_files(name, folder, files):
    """The folders of the bundle's temporal-layer and temporal-decoder files join
    ComfyUI's temporal_layers / temporal_decoders lists (never the bundle folder
    itself: its UNet and autoencoder files would be listed as temporal layers)."""
    for folder_name, parts in ((FOLDER, LAYER_PARTS), (DECODER_FOLDER, DECODER_PARTS)):
        for part in parts:
            if part not in files:
                continue
            where = os.path.dirname(files[part])
            if os.path.normpath(where) == os.path.normpath(folder):
                warn_once(
                    "Video LDM bundle %s keeps its %s file next to its model files, so Temporal UNet Patcher / Temporal VAE Decode "
                    "cannot list it: move temporal-layer files into its temporal_layers/ and temporal-decoder files into its "
                    "temporal_decoders/ subfolder and update bundle.json", name, part,
                )
                continue
            if folder_name not in folder_paths.folder_names_and_paths:
                continue
            if where not in folder_paths.get_folder_paths(folder_name):
                folder_paths.add_model_folder_path(folder_name, where)
                REGISTERED.add((folder_name, where))
            listed = os.path.relpath(files[part], where).replace(os.sep, "/")
            found = folder_paths.get_full_path(folder_name, listed)
            if found and os.path.normpath(found) != os.path.normpath(files[part]):
                warn_once(
                    "Video LDM bundle %s: its %s file is listed as %s, a name %s already has, which wins: "
                    "name a bundle's temporal files after the bundle (e.g. %s-%s)", name, part, listed, found, name.replace("/", "-"), os.path.basename(listed),
                )


def find_bundle(name):
    folders = bundle_folders()
    if name in folders:
        return folders[name]
    for base in folder_paths.get_folder_paths(BUNDLE_FOLDER):
        candidate = os.path.join(base, name)
        if os.path.isdir(candidate):
            return candidate
    raise FileNotFoundError(
        f"no Video LDM bundle {name!r} in {', '.join(folder_paths.get_folder_paths(BUNDLE_FOLDER))}: "
        f"put the bundle folder (with its {BUNDLE}) in ComfyUI's models/{BUNDLE_FOLDER} and refresh"
    )


def bundle_file(files, part, name, folder):
    """The path of ``part``, checked to be named and present, and safetensors."""
    if part not in files:
        raise WeightFileError(f"bundle {name!r} has no {part} file: its {BUNDLE} names {', '.join(sorted(files)) or 'none'}; copy the whole bundle folder again")
    path = files[part]
    shown = os.path.relpath(path, folder).replace(os.sep, "/")
    if not path.endswith(".safetensors"):
        raise WeightFileError(f"bundle {name!r} names {shown} as its {part}: model files load from .safetensors only (pickled files are never opened)")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"bundle {name!r} is missing {shown}, which its {BUNDLE} names as its {part}: copy the whole bundle folder again")
    return path


def load_part(files, part, kind, name, folder):
    """(module, metadata) of one of the bundle's own model files; a foreign file is refused, naming the fix."""
    path = bundle_file(files, part, name, folder)
    shown = os.path.relpath(path, folder).replace(os.sep, "/")
    try:
        return load_model(path, kind)
    except (WeightFileError, RuntimeError) as e:
        raise WeightFileError(
            f"bundle {name!r}: its {part} file {shown} is not the pack's {kind} model file ({e}); "
            "restore the bundle's own file (copy the bundle folder again). SD checkpoints load with Load Checkpoint, temporal-layer files with Temporal UNet Patcher"
        ) from e


# ------------------------------------------------------------------ MODEL


def _to_comfy_key(key):
    """A key of the pack's UNet as ComfyUI's openaimodel names it: its ResBlock
    and feed-forward Sequentials hold Dropouts the pack's do not, and its
    attention output projection sits in a Sequential."""
    key = re.sub(r"\.out_layers\.2\.", ".out_layers.3.", key)
    key = re.sub(r"\.ff\.0\.proj\.", ".ff.net.0.proj.", key)
    key = re.sub(r"\.ff\.1\.", ".ff.net.2.", key)
    return re.sub(r"\.to_out\.(weight|bias)$", r".to_out.0.\1", key)


def comfy_unet_state_dict(state_dict):
    return {_to_comfy_key(k): v for k, v in state_dict.items()}


def group_norm_ops(base, groups):
    """ComfyUI operations ``base`` whose GroupNorm has ``groups`` groups and eps 1e-6, as the pack's UNet."""

    class GroupNorm(base.GroupNorm):
        def __init__(self, num_groups, num_channels, eps=NORM_EPS, affine=True, **kwargs):
            super().__init__(groups, num_channels, eps=NORM_EPS, affine=affine, **kwargs)

    return type(f"{base.__name__}_groups{groups}", (base,), {"GroupNorm": GroupNorm})


class BundleLatentFormat(comfy.latent_formats.LatentFormat):
    """The bundle autoencoder's latents: its scale, channels and downsampling
    (``spacial_downscale_ratio``, as ComfyUI's own formats name it, tells the
    Keyframe Sampler how large the latents of a frame size are)."""

    def __init__(self, autoencoder, metadata):
        self.scale_factor = float(metadata.get("latent_scale", 1.0))
        self.latent_channels = autoencoder.config.z_channels
        self.spacial_downscale_ratio = autoencoder.config.downsampling


class BundleModelConfig:
    """What the pack's UNet file says: prediction type, latent scale, GroupNorm groups."""

    unet_extra_config = {}  # the detected config is complete
    supported_inference_dtypes = INFERENCE_DTYPES

    def __init__(self, unet_config, prediction_type, latent_format, norm_groups):
        super().__init__(unet_config)
        self.latent_format = latent_format
        self.prediction_type, self.norm_groups = prediction_type, norm_groups

    def model_type(self, state_dict=None, prefix=""):
        return PREDICTION[self.prediction_type]

    def set_inference_dtype(self, dtype, manual_cast_dtype):
        super().set_inference_dtype(dtype, manual_cast_dtype)
        self.custom_operations = group_norm_ops(comfy.ops.pick_operations(dtype, manual_cast_dtype, model_config=self), self.norm_groups)

    def clip_target(self, state_dict={}):
        return None


class BundleImageModel(BundleModelConfig, comfy.supported_models_base.BASE):
    """SD's linear noise schedule (BASE's defaults), the bundle's prediction type and latent scale."""


class BundleUpscalerModel(BundleModelConfig, comfy.supported_models.SD_X4Upscaler):
    """The x4 upscaler's schedule, noise augmentation and conds, with the bundle's UNet."""

    def get_model(self, state_dict, prefix="", device=None):
        return comfy.model_base.SD_X4Upscaler(self, model_type=self.model_type(), device=device)


def unet_config_for(state_dict, config, name, part):
    """ComfyUI's unet_config of the pack's UNet, read by ComfyUI's own detection."""
    unet_config = comfy.model_detection.detect_unet_config(state_dict, "")
    if unet_config is None:
        raise WeightFileError(f"bundle {name!r}: ComfyUI does not recognise its {part} as an SD-layout UNet: copy the bundle folder again")
    unet_config.update(num_heads=-1, num_head_channels=config.head_dim)
    if config.num_classes:
        unet_config["num_classes"] = config.num_classes
    return unet_config


def comfy_model(unet, metadata, latent_format, config_class, name, part):
    """A ModelPatcher of a ComfyUI model carrying ``unet``'s weights, built the
    way ComfyUI's checkpoint loader builds one (dtype, devices, initial load)."""
    state_dict = comfy_unet_state_dict(unet.state_dict())
    prediction_type = metadata.get("prediction_type", "eps")
    if prediction_type not in PREDICTION:
        raise WeightFileError(f"bundle {name!r}: its {part} predicts {prediction_type!r}; ComfyUI runs eps or v prediction: copy the bundle folder again")
    config = config_class(unet_config_for(state_dict, unet.config, name, part), prediction_type, latent_format, unet.config.norm_groups)
    parameters = sum(v.numel() for v in state_dict.values())
    load_device = comfy.model_management.get_torch_device()
    unet_dtype = comfy.model_management.unet_dtype(model_params=parameters, supported_dtypes=config.supported_inference_dtypes)
    config.set_inference_dtype(unet_dtype, comfy.model_management.unet_manual_cast(unet_dtype, load_device, config.supported_inference_dtypes))
    initial_device = comfy.model_management.unet_inital_load_device(parameters, unet_dtype)
    model = config.get_model(state_dict, "", device=initial_device)
    expected = model.diffusion_model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state_dict)), sorted(set(state_dict) - set(expected))
    wrong_shape = [k for k in expected if k in state_dict and state_dict[k].shape != expected[k].shape]
    if missing or unexpected or wrong_shape:
        raise WeightFileError(
            f"bundle {name!r}: its {part} does not map onto ComfyUI's UNet (missing {missing[:3]}, unexpected {unexpected[:3]}, wrong shape {wrong_shape[:3]}): "
            "this pack version cannot load it into ComfyUI; update the pack"
        )
    model.load_model_weights(state_dict, "")
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=comfy.model_management.unet_offload_device())
    if initial_device != torch.device("cpu"):
        comfy.model_management.load_models_gpu([patcher], force_full_load=True)
    return patcher


# ------------------------------------------------------------------ CLIP

TOKENS = "vldm"  # the tokenizer's key in a token dict, as "l" is SD1.x CLIP's
MAX_TOKENS = "vldm_max_tokens"  # tokenizer_data key


class BundleTokenizer:
    """Words as the bundle's caption encoder splits them, each with its ComfyUI
    prompt weight (``(word:1.2)``, ``(word)`` = 1.1), at most max_tokens of them."""

    def __init__(self, embedding_directory=None, tokenizer_data={}):
        self.max_tokens = tokenizer_data[MAX_TOKENS]

    def tokenize_with_weights(self, text, return_word_ids=False, disable_weights=False, **kwargs):
        segments = [(text, 1.0)] if disable_weights else [(unescape_important(s), w) for s, w in token_weights(escape_important(text), 1.0)]
        words = [(word, weight) for segment, weight in segments for word in WORD.findall(segment.lower())][: self.max_tokens]
        if return_word_ids:
            return {TOKENS: [[(word, weight, i + 1) for i, (word, weight) in enumerate(words)]]}
        return {TOKENS: [words]}

    def untokenize(self, token_weight_pair):
        return [(pair, pair[0]) for pair in token_weight_pair]

    def state_dict(self):
        return {}


class BundleTextEncoder(TextEncoder):
    """The bundle's caption encoder as a CLIP cond-stage model: weights and
    compute in fp32 (it is small); weighted words move from the empty prompt's
    encoding as ComfyUI's CLIP weighting does. It has no pooled output."""

    def __init__(self, text_config, device=None, dtype=None, model_options={}):
        super().__init__(text_config)
        self.to(device).eval()  # as the pipeline runs it (PyTorch's transformer layers take another path in training mode)
        self.dtypes = {torch.float32}

    def set_clip_options(self, options):
        pass  # CLIP's layer / pooled options do not apply; it runs where its weights are

    def reset_clip_options(self):
        pass

    def encode_token_weights(self, token_weight_pairs):
        sections, empty, out = token_weight_pairs[TOKENS], None, []
        for section in sections or [[]]:
            z = self([" ".join(pair[0] for pair in section)])
            weights = torch.ones(z.shape[1], device=z.device)
            weights[: len(section)] = torch.tensor([float(pair[1]) for pair in section][: z.shape[1]], device=z.device)
            if (weights != 1.0).any():
                empty = self([""]) if empty is None else empty
                z = torch.where((weights != 1.0)[None, :, None], empty + (z - empty) * weights[None, :, None], z)
            out.append(z)
        return torch.cat(out, dim=1).float().to(comfy.model_management.intermediate_device()), None

    def load_sd(self, sd):
        return self.load_state_dict(sd, strict=False)


def comfy_clip(text_encoder):
    target = comfy.supported_models_base.ClipTarget(BundleTokenizer, BundleTextEncoder)
    target.params = {"text_config": text_encoder.config}
    state_dict = text_encoder.state_dict()
    return comfy.sd.CLIP(
        target, tokenizer_data={MAX_TOKENS: text_encoder.config.max_tokens}, parameters=sum(v.numel() for v in state_dict.values()), state_dict=state_dict,
    )


# ------------------------------------------------------------------ VAE


def comfy_vae(autoencoder, name, part):
    """ComfyUI's AutoencoderKL with the autoencoder's config and weights."""
    config = autoencoder.config
    if config.norm_groups != COMFY_VAE_GROUPS:
        raise WeightFileError(
            f"bundle {name!r}: its {part} normalises with {config.norm_groups} groups, ComfyUI's VAE with {COMFY_VAE_GROUPS}: "
            f"train or export the autoencoder with norm_groups = {COMFY_VAE_GROUPS} (channels a multiple of {COMFY_VAE_GROUPS}) to use it in ComfyUI"
        )
    ddconfig = {
        "double_z": True, "z_channels": config.z_channels, "resolution": 256, "in_channels": config.in_channels, "out_ch": config.in_channels,
        "ch": config.ch, "ch_mult": list(config.ch_mult), "num_res_blocks": config.num_res_blocks, "attn_resolutions": [], "dropout": 0.0,
    }
    vae = comfy.sd.VAE(sd=autoencoder.state_dict(), config={"params": {"ddconfig": ddconfig, "embed_dim": config.z_channels}})
    loaded = vae.first_stage_model.state_dict()
    missing = sorted(set(loaded) - set(autoencoder.state_dict()))
    if missing:
        raise WeightFileError(f"bundle {name!r}: its {part} does not map onto ComfyUI's AutoencoderKL (missing {missing[:3]}): update the pack")
    vae.latent_channels = config.z_channels
    vae.downscale_ratio = vae.upscale_ratio = config.downsampling
    return vae


# ------------------------------------------------------------------ loading


def load_image_bundle(folder, name):
    """(MODEL, CLIP, VAE) of the bundle's image model."""
    files = read_bundle(folder, name)[1]
    unet, unet_meta = load_part(files, "unet", "unet", name, folder)
    autoencoder, ae_meta = load_part(files, "autoencoder", "autoencoder", name, folder)
    text_encoder, _ = load_part(files, "text_encoder", "text_encoder", name, folder)
    model = comfy_model(unet, unet_meta, BundleLatentFormat(autoencoder, ae_meta), BundleImageModel, name, "unet")
    return model, comfy_clip(text_encoder), comfy_vae(autoencoder, name, "autoencoder")


def load_upscaler_bundle(folder, name):
    """(MODEL, CLIP, VAE) of the bundle's x4-style upscaler."""
    files = read_bundle(folder, name)[1]
    if "upscaler_unet" not in files:
        raise WeightFileError(f"bundle {name!r} has no upscaler (its {BUNDLE} names no upscaler_unet): load it with Load Video LDM Bundle, or pick a bundle with an upscaler")
    unet, unet_meta = load_part(files, "upscaler_unet", "unet", name, folder)
    autoencoder, ae_meta = load_part(files, "upscaler_autoencoder", "autoencoder", name, folder)
    text_encoder, _ = load_part(files, "text_encoder", "text_encoder", name, folder)
    levels = MAX_NOISE_LEVEL + 1  # ComfyUI's x4 upscaler asks for levels 0 to 350 (its label y)
    if unet.config.in_channels != autoencoder.config.z_channels + 3 or unet.config.num_classes < levels:
        raise WeightFileError(
            f"bundle {name!r}: its upscaler_unet takes {unet.config.in_channels} channels and {unet.config.num_classes} noise levels; "
            f"an x4 upscaler takes its latents' {autoencoder.config.z_channels} + 3 low-res channels and {levels} levels: copy the bundle folder again"
        )
    model = comfy_model(unet, unet_meta, BundleLatentFormat(autoencoder, ae_meta), BundleUpscalerModel, name, "upscaler_unet")
    return model, comfy_clip(text_encoder), comfy_vae(autoencoder, name, "upscaler_autoencoder")


BUNDLE_TOOLTIP = (
    f"A Video LDM model bundle: a folder with a {BUNDLE} in ComfyUI's models/{BUNDLE_FOLDER} or the pack's models folder. "
    "Its temporal-layer and temporal-decoder files appear in Temporal UNet Patcher and Temporal VAE Decode."
)


class BundleLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VLDM_BundleLoader",
            display_name="Load Video LDM Bundle",
            category="Video LDM",
            description=(
                "Loads the image model of a Video LDM bundle (e.g. the bundled small model) as MODEL, CLIP and VAE, like Load Checkpoint: "
                "patch the MODEL with the bundle's temporal layers, encode prompts with CLIP Text Encode, decode with Temporal VAE Decode."
            ),
            inputs=[io.Combo.Input("bundle", options=bundle_names(), tooltip=BUNDLE_TOOLTIP)],
            outputs=[
                io.Model.Output(display_name="MODEL", tooltip="The bundle's image UNet; Temporal UNet Patcher adds its temporal layers."),
                io.Clip.Output(display_name="CLIP", tooltip="The bundle's caption encoder, for CLIP Text Encode (empty text is the negative it was trained with)."),
                io.Vae.Output(display_name="VAE", tooltip="The bundle's KL autoencoder (4x or 8x, as trained; the bundled model's is 4x), for VAE Decode / VAE Encode and Temporal VAE Decode."),
            ],
        )

    @classmethod
    def execute(cls, bundle) -> io.NodeOutput:
        return io.NodeOutput(*load_image_bundle(find_bundle(bundle), bundle))


class BundleUpscalerLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VLDM_BundleUpscalerLoader",
            display_name="Load Video LDM Bundle Upscaler",
            category="Video LDM",
            description=(
                "Loads the x4 upscaler of a Video LDM bundle as MODEL, CLIP and VAE, like Load Checkpoint loads the SD x4 upscaler: "
                "patch the MODEL with the bundle's upscaler temporal layers for the Video Upscaler, decode its LATENT with VAE Decode."
            ),
            inputs=[io.Combo.Input("bundle", options=bundle_names(upscaler=True), tooltip=BUNDLE_TOOLTIP + " Only bundles with an upscaler are listed.")],
            outputs=[
                io.Model.Output(display_name="MODEL", tooltip="The bundle's x4-style upscaler UNet (v-prediction, noise level as class label)."),
                io.Clip.Output(display_name="CLIP", tooltip="The bundle's caption encoder, for CLIP Text Encode."),
                io.Vae.Output(display_name="VAE", tooltip="The upscaler's autoencoder (4x): VAE Decode turns the Video Upscaler's LATENT into 4x larger frames."),
            ],
        )

    @classmethod
    def execute(cls, bundle) -> io.NodeOutput:
        return io.NodeOutput(*load_upscaler_bundle(find_bundle(bundle), bundle))
