"""Where temporal layers go in a CompVis-layout UNet, and putting them there.

The CompVis layout (Stable Diffusion's original code, and ComfyUI's) keeps the
UNet as ``input_blocks`` / ``middle_block`` / ``output_blocks``, each entry a
sequence of ResBlock, SpatialTransformer, Down/Upsample. Where the layers go is
the layout's placement (PLACEMENTS): Video LDM puts a temporal residual block
after every ResBlock and a temporal attention block after every
SpatialTransformer; AnimateDiff puts one motion module after the last of them in
each block. Layers are recognised by class name and read through the
attributes both codebases share, so this file needs no ComfyUI import.

Injection adds each temporal layer to its sequence under a new name
(``"1_temporal"`` after child ``"1"``) and keeps the spatial children's names,
so state-dict keys, LoRA keys and weight patches of the image model stay valid
while the video layers are in.
"""

import json
import weakref
from dataclasses import asdict, dataclass, replace

from einops import rearrange
from torch import nn

from .file_checks import config_from
from .temporal import frames_of_call

BLOCK_GROUPS = ("input_blocks", "middle_block", "output_blocks")
TEMPORAL_SUFFIX = "_temporal"
MAX_SITES = 1024  # SD 1.5 has 32 Video LDM sites, SDXL 92
PLACEMENTS = {
    "videoldm": "a temporal layer after every ResBlock and SpatialTransformer (Video LDM)",
    "motion_modules": "a motion module after the last ResBlock or SpatialTransformer of every down and up block (AnimateDiff v1, v3)",
    "motion_modules_mid": "a motion module after the last ResBlock or SpatialTransformer of every down and up block, and one after the middle block's transformer (AnimateDiff v2)",
}


@dataclass(frozen=True)
class InsertionSite:
    """One spatial layer that a temporal layer follows."""

    path: str  # the spatial layer's module path, e.g. "input_blocks.1.0"
    kind: str  # "res" or "attention"
    channels: int
    emb_channels: int = 0  # res: timestep-embedding width
    heads: int = 0  # attention: as in the spatial transformer
    head_dim: int = 0
    context_dim: int = 0
    motion_module: str = ""  # motion sites: the module's name in AnimateDiff's files, e.g. "down_blocks.0.motion_modules.1"

    @property
    def key(self):
        """The name in a ModuleDict, which forbids dots."""
        return self.path.replace(".", "_")


@dataclass(frozen=True)
class UNetLayout:
    family: str
    in_channels: int
    context_dim: int
    sites: tuple
    placement: str = "videoldm"  # a key of PLACEMENTS

    def describe(self):
        context = f"context {self.context_dim}, " if self.context_dim else ""
        return f"{self.family} ({context}{len(self.sites)} temporal sites)"

    def to_json(self):
        return json.dumps({**asdict(self), "sites": [asdict(s) for s in self.sites]})

    @classmethod
    def from_json(cls, text):
        return cls.from_values(json.loads(text), ValueError)

    @classmethod
    def from_values(cls, values, refuse):
        """The layout ``to_json`` wrote, every field typed (file_checks.config_from);
        ``refuse(problem)`` makes the error for values that are not a layout."""
        sites = values.get("sites") if isinstance(values, dict) else None
        if not isinstance(sites, list) or len(sites) > MAX_SITES:
            raise refuse(f"has a UNet layout whose sites are not a list of at most {MAX_SITES}")
        layout = replace(config_from(cls, {**values, "sites": ()}, refuse), sites=tuple(config_from(InsertionSite, s, refuse) for s in sites))
        if layout.placement not in PLACEMENTS:
            raise refuse(f"has a UNet layout placed as {layout.placement[:40]!r}; this pack places layers as {sorted(PLACEMENTS)}")
        return layout

    def mismatch(self, other, target="MODEL"):
        """Why temporal layers built for ``self`` do not fit a ``target`` (MODEL or VAE) of layout ``other``, or None."""
        if self.placement != other.placement:
            return f"placed as {PLACEMENTS[self.placement]}, which this {target} is not read for"
        if self.family != other.family or self.context_dim != other.context_dim:
            return f"built for {self.describe()}, this {target} is {other.describe()}"
        if len(self.sites) != len(other.sites):
            return f"built for {self.family} with {len(self.sites)} temporal sites, this {target} has {len(other.sites)}"
        for mine, theirs in zip(self.sites, other.sites):
            if mine != theirs:
                return f"built for {self.family}, whose layer {mine.path} is {_site_text(mine)}; in this {target} it is {_site_text(theirs)}"
        return None


def _site_text(site):
    if site.kind == "res":
        return f"a ResBlock of {site.channels} channels"
    return f"a SpatialTransformer of {site.channels} channels, {site.heads}x{site.head_dim} heads, context {site.context_dim}"


def name_family(in_channels, context_dim):
    if in_channels == 7 and context_dim == 1024:
        return "SD x4 upscaler"
    return {768: "SD1.x", 1024: "SD2.x", 2048: "SDXL"}.get(context_dim, f"custom UNet (in_channels {in_channels})")


def _site(path, layer):
    kind = type(layer).__name__
    if kind == "ResBlock":
        return InsertionSite(path, "res", layer.out_channels, emb_channels=layer.emb_channels)
    if kind == "SpatialTransformer":
        attn = layer.transformer_blocks[0].attn1
        cross = layer.transformer_blocks[0].attn2
        return InsertionSite(path, "attention", layer.in_channels, heads=attn.heads, head_dim=attn.dim_head, context_dim=cross.to_k.in_features)
    return None


def iter_blocks(unet):
    """(path, sequence) for every TimestepEmbedSequential, in execution order."""
    for group in BLOCK_GROUPS:
        blocks = getattr(unet, group)
        if group == "middle_block":
            yield group, blocks
        else:
            for i, block in enumerate(blocks):
                yield f"{group}.{i}", block


def _spatial_sites(block_path, block):
    return [site for name, layer in block.named_children() if (site := _site(f"{block_path}.{name}", layer)) is not None]


def _motion_sites(unet, mid_block):
    """One site after the last spatial layer of every input and output block that
    has one (and after the middle block's transformer where ``mid_block``), named
    as AnimateDiff names its modules: per resolution level, counted from the
    input side for down blocks and from the output side for up blocks."""
    names = {"input_blocks": "down_blocks", "output_blocks": "up_blocks"}
    level, index, group = 0, 0, None
    for block_path, block in iter_blocks(unet):
        if block_path.split(".")[0] != group:
            level, index, group = 0, 0, block_path.split(".")[0]
        spatial = _spatial_sites(block_path, block)
        if group == "middle_block":  # between its transformer and its second ResBlock
            spatial = [site for site in spatial if site.kind == "attention"] if mid_block else []
        if spatial:
            name = "mid_block.motion_modules.0" if group == "middle_block" else f"{names[group]}.{level}.motion_modules.{index}"
            yield InsertionSite(spatial[-1].path, "motion", spatial[-1].channels, motion_module=name)
            index += 1
        if any(type(layer).__name__ in ("Downsample", "Upsample") for layer in block.children()):
            level, index = level + 1, 0


def find_layout(unet: nn.Module, placement="videoldm") -> UNetLayout:
    """Read the insertion sites of ``placement`` off an image UNet; fail clearly on anything else."""
    if not all(hasattr(unet, g) for g in BLOCK_GROUPS):
        raise ValueError(
            f"this MODEL's diffusion model ({type(unet).__name__}) is not a Stable Diffusion UNet: Video LDM temporal layers "
            "need an SD 1.x / SD 2.x UNet (or the SD x4 upscaler). Load an SD 1.x or 2.x checkpoint."
        )
    if any(name.endswith("time_stack") for name, _ in unet.named_modules()):
        raise ValueError(
            "this MODEL is already a video UNet (it has SVD-style 'time_stack' layers): Video LDM temporal layers go into an "
            "image UNet. Load an SD 1.x / 2.x image checkpoint instead."
        )
    spatial = [site for block_path, block in iter_blocks(unet) for site in _spatial_sites(block_path, block)]
    contexts = {s.context_dim for s in spatial if s.kind == "attention"}
    if len(contexts) != 1:
        raise ValueError(f"this UNet has no single text-context width (found {sorted(contexts) or 'no transformers'}); it is not an SD 1.x / 2.x UNet")
    if placement == "videoldm":
        sites = spatial
    elif placement in PLACEMENTS:
        sites = list(_motion_sites(unet, mid_block=placement == "motion_modules_mid"))
    else:
        raise ValueError(f"unknown placement {placement!r}; known: {', '.join(PLACEMENTS)}")
    in_channels = unet.input_blocks[0][0].in_channels
    context_dim = contexts.pop()
    return UNetLayout(name_family(in_channels, context_dim), in_channels, context_dim, tuple(sites), placement)


def _resolve(root, path):
    for name in path.split("."):
        root = getattr(root, name)
    return root


def inject(unet, layers):
    """Insert each temporal layer of ``layers`` (a temporal.TemporalLayers) right
    after its spatial layer; where its config asks for frame-joint norms, the
    GroupNorms of every ResBlock and of the output also normalise whole clips
    (join_frames_in_norms). Idempotent."""
    by_block = {}
    for path, layer in layers.by_site().items():
        block_path, child = path.rsplit(".", 1)
        by_block.setdefault(block_path, {})[child] = layer
    for block_path, inserts in by_block.items():
        block = _resolve(unet, block_path)
        children = [(name, m) for name, m in block._modules.items() if not name.endswith(TEMPORAL_SUFFIX)]
        block._modules.clear()
        for name, module in children:
            block._modules[name] = module
            if name in inserts:
                block._modules[name + TEMPORAL_SUFFIX] = inserts[name]
    if layers.config.frame_joint_norms and unet not in _JOINT_NORM_HOOKS:
        _JOINT_NORM_HOOKS[unet] = join_frames_in_norms(unet)
    elif not layers.config.frame_joint_norms:
        _remove_joint_norm_hooks(unet)


def eject(unet):
    """Remove every temporal layer (and frame-joint normalisation) that ``inject`` put in."""
    for _, block in iter_blocks(unet):
        for name in [n for n in block._modules if n.endswith(TEMPORAL_SUFFIX)]:
            del block._modules[name]
    _remove_joint_norm_hooks(unet)


# ------------------------------------------------------- frame-joint GroupNorm

_JOINT_NORM_HOOKS = weakref.WeakKeyDictionary()  # UNet -> the hook handles join_frames_in_norms registered


def _frames_joined(norm, args):
    (x,) = args
    return (rearrange(x, "(b t) c h w -> b c (t h) w", t=frames_of_call()),)


def _frames_apart(norm, args, output):
    return rearrange(output, "b c (t h) w -> (b t) c h w", t=frames_of_call())


def join_frames_in_norms(unet):
    """Make the GroupNorms of every ResBlock (``in_layers.0``, ``out_layers.0``)
    and of the UNet's output (``out.0``) normalise each clip as a whole, over its
    frames and pixels, as AnimateDiff v1's UNet did (its GroupNorms were not
    "inflated" to act per frame). Done with forward hooks on the norms
    themselves, so their weights, names, weight patches and low-VRAM casting
    stay the UNet's own; the frame count comes from temporal.frames_in_call.
    Returns the hook handles."""
    res_blocks = [layer for _, block in iter_blocks(unet) for layer in block.children() if type(layer).__name__ == "ResBlock"]
    norms = [norm for res in res_blocks for norm in (res.in_layers[0], res.out_layers[0])] + [unet.out[0]]
    for norm in norms:
        if not isinstance(norm, nn.GroupNorm):
            raise ValueError(f"this UNet's {type(norm).__name__} is not a GroupNorm: AnimateDiff v1's frame-joint normalisation needs SD's ResBlocks")
    return [hook for norm in norms for hook in (norm.register_forward_pre_hook(_frames_joined), norm.register_forward_hook(_frames_apart))]


def _remove_joint_norm_hooks(unet):
    for hook in _JOINT_NORM_HOOKS.pop(unet, []):
        hook.remove()
