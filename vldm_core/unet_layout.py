"""Where temporal layers go in a CompVis-layout UNet, and putting them there.

The CompVis layout (Stable Diffusion's original code, and ComfyUI's) keeps the
UNet as ``input_blocks`` / ``middle_block`` / ``output_blocks``, each entry a
sequence of ResBlock, SpatialTransformer, Down/Upsample. A temporal residual
block goes after every ResBlock and a temporal attention block after every
SpatialTransformer. Layers are recognised by class name and read through the
attributes both codebases share, so this file needs no ComfyUI import.

Injection adds each temporal layer to its sequence under a new name
(``"1_temporal"`` after child ``"1"``) and keeps the spatial children's names,
so state-dict keys, LoRA keys and weight patches of the image model stay valid
while the video layers are in.
"""

import json
from dataclasses import asdict, dataclass

from torch import nn

BLOCK_GROUPS = ("input_blocks", "middle_block", "output_blocks")
TEMPORAL_SUFFIX = "_temporal"


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

    def describe(self):
        context = f"context {self.context_dim}, " if self.context_dim else ""
        return f"{self.family} ({context}{len(self.sites)} temporal sites)"

    def to_json(self):
        return json.dumps({"family": self.family, "in_channels": self.in_channels, "context_dim": self.context_dim, "sites": [asdict(s) for s in self.sites]})

    @classmethod
    def from_json(cls, text):
        values = json.loads(text)
        values["sites"] = tuple(InsertionSite(**s) for s in values["sites"])
        return cls(**values)

    def mismatch(self, other, target="MODEL"):
        """Why temporal layers built for ``self`` do not fit a ``target`` (MODEL or VAE) of layout ``other``, or None."""
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


def find_layout(unet: nn.Module) -> UNetLayout:
    """Read the insertion sites off an image UNet; fail clearly on anything else."""
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
    sites = []
    for block_path, block in iter_blocks(unet):
        for child, layer in block.named_children():
            site = _site(f"{block_path}.{child}", layer)
            if site is not None:
                sites.append(site)
    contexts = {s.context_dim for s in sites if s.kind == "attention"}
    if len(contexts) != 1:
        raise ValueError(f"this UNet has no single text-context width (found {sorted(contexts) or 'no transformers'}); it is not an SD 1.x / 2.x UNet")
    in_channels = unet.input_blocks[0][0].in_channels
    context_dim = contexts.pop()
    return UNetLayout(name_family(in_channels, context_dim), in_channels, context_dim, tuple(sites))


def _resolve(root, path):
    for name in path.split("."):
        root = getattr(root, name)
    return root


def inject(unet, layers_by_site):
    """Insert each temporal layer right after its spatial layer; ``layers_by_site``
    maps InsertionSite.path to the layer. Idempotent."""
    by_block = {}
    for path, layer in layers_by_site.items():
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


def eject(unet):
    """Remove every temporal layer that ``inject`` put in."""
    for _, block in iter_blocks(unet):
        for name in [n for n in block._modules if n.endswith(TEMPORAL_SUFFIX)]:
            del block._modules[name]
