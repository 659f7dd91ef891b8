"""CLIP-SIM: how well frames match their caption, by CLIP (Radford et al. 2021).

The network is Hugging Face ``transformers``' ``CLIPModel`` in its folder
layout (as openai/clip-vit-base-patch32 on the Hub): ``config.json`` (sizes,
read here, so any CLIPModel size loads), ``model.safetensors`` (keys
``text_model.embeddings.token_embedding.weight``, ...,
``vision_model.pre_layrnorm.weight``, ``visual_projection.weight``,
``logit_scale``), ``vocab.json`` and ``merges.txt``. The tokenizer is CLIP's
byte-level BPE, read from those two files: HTML entities unescaped, NFC,
whitespace runs to one space, lower case, words ending in ``</w>``, start and
end tokens, 77 tokens (the text config's ``max_position_embeddings``). ftfy's
repair of mis-decoded text is not done.

Frames ``(n, 3, h, w)`` in [0, 1] are prepared as CLIPImageProcessor does:
shortest side resized to ``image_size`` (bicubic, antialiased, clamped to
[0, 1] as PIL's uint8 result is), centre crop, CLIP's mean and std.

``clip_similarity`` is the mean over frames of the cosine between the
projected frame and caption embeddings, unscaled and unclipped: the scale of
Video LDM's CLIP-SIM (0.2929 on MSR-VTT) and of the works it compares with,
commonly measured with ViT-B/32. torchmetrics' CLIPScore is 100 * max(cosine, 0).
"""

import html
import json
import math
import os
import re
import unicodedata
from dataclasses import dataclass, fields
from functools import lru_cache

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..file_checks import WeightFileError
from .files import load_weights

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
START, END = "<|startoftext|>", "<|endoftext|>"
FOLDER_FILES = ("config.json", "model.safetensors", "vocab.json", "merges.txt")
CONVERSION = (
    "Use a Hugging Face CLIPModel folder (e.g. openai/clip-vit-base-patch32: config.json, model.safetensors, vocab.json, merges.txt); "
    "from a checkout with only pytorch_model.bin, run CLIPModel.from_pretrained(folder).save_pretrained(new_folder) where transformers is installed."
)


@dataclass(frozen=True)
class CLIPTextConfig:
    """transformers' CLIPTextConfig fields that shape the network, with its defaults."""

    vocab_size: int = 49408
    hidden_size: int = 512
    intermediate_size: int = 2048
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5


@dataclass(frozen=True)
class CLIPVisionConfig:
    """transformers' CLIPVisionConfig fields that shape the network, with its defaults."""

    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 32
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5


@dataclass(frozen=True)
class CLIPConfig:
    text: CLIPTextConfig = CLIPTextConfig()
    vision: CLIPVisionConfig = CLIPVisionConfig()
    projection_dim: int = 512

    @classmethod
    def from_dict(cls, values):
        """From a config.json's contents; keys that do not shape the network are ignored."""

        def pick(config_cls, part):
            return config_cls(**{f.name: part[f.name] for f in fields(config_cls) if f.name in part})

        return cls(pick(CLIPTextConfig, values.get("text_config") or {}), pick(CLIPVisionConfig, values.get("vision_config") or {}), values.get("projection_dim", 512))


ACTIVATIONS = {"quick_gelu": lambda x: x * torch.sigmoid(1.702 * x), "gelu": F.gelu}


class CLIPAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x, causal):
        q, k, v = (rearrange(proj(x), "b n (h d) -> b h n d", h=self.heads) for proj in (self.q_proj, self.k_proj, self.v_proj))
        return self.out_proj(rearrange(F.scaled_dot_product_attention(q, k, v, is_causal=causal), "b h n d -> b n (h d)"))


class CLIPMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.activation = ACTIVATIONS[config.hidden_act]
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x):
        return self.fc2(self.activation(self.fc1(x)))


class CLIPEncoderLayer(nn.Module):
    """Pre-norm transformer layer: attention, then MLP, each added to its input."""

    def __init__(self, config):
        super().__init__()
        self.self_attn = CLIPAttention(config.hidden_size, config.num_attention_heads)
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = CLIPMLP(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x, causal):
        x = x + self.self_attn(self.layer_norm1(x), causal)
        return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.layers = nn.ModuleList(CLIPEncoderLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, x, causal):
        for layer in self.layers:
            x = layer(x, causal)
        return x


class CLIPTextEmbeddings(nn.Module):
    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embedding = nn.Embedding(config.max_position_embeddings, config.hidden_size)

    def forward(self, input_ids):
        return self.token_embedding(input_ids) + self.position_embedding.weight[: input_ids.shape[1]]


class CLIPTextTransformer(nn.Module):
    """Causal transformer over tokens; a caption's embedding is the final state at its end token."""

    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        self.embeddings = CLIPTextEmbeddings(config)
        self.encoder = CLIPEncoder(config)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, input_ids, end_token):
        x = self.final_layer_norm(self.encoder(self.embeddings(input_ids), causal=True))
        end = (input_ids == end_token).int().argmax(-1)  # the first end token; padding after it is never attended to
        return x[torch.arange(x.shape[0], device=x.device), end]


class CLIPVisionEmbeddings(nn.Module):
    def __init__(self, config: CLIPVisionConfig):
        super().__init__()
        self.class_embedding = nn.Parameter(torch.randn(config.hidden_size))
        self.patch_embedding = nn.Conv2d(config.num_channels, config.hidden_size, config.patch_size, config.patch_size, bias=False)
        self.position_embedding = nn.Embedding((config.image_size // config.patch_size) ** 2 + 1, config.hidden_size)

    def forward(self, pixel_values):
        patches = rearrange(self.patch_embedding(pixel_values), "b c h w -> b (h w) c")
        cls = self.class_embedding.expand(patches.shape[0], 1, -1)
        return torch.cat([cls, patches], 1) + self.position_embedding.weight


class CLIPVisionTransformer(nn.Module):
    """ViT over patches and a class token; an image's embedding is the class token's final state."""

    def __init__(self, config: CLIPVisionConfig):
        super().__init__()
        self.embeddings = CLIPVisionEmbeddings(config)
        self.pre_layrnorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)  # sic, as transformers spells it
        self.encoder = CLIPEncoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, pixel_values):
        x = self.encoder(self.pre_layrnorm(self.embeddings(pixel_values)), causal=False)
        return self.post_layernorm(x[:, 0])


class CLIPModel(nn.Module):
    """Both towers and their projections into the shared embedding space.
    Attribute names are transformers' CLIPModel's, so its state dict loads as is."""

    def __init__(self, config: CLIPConfig = CLIPConfig()):
        super().__init__()
        self.config = config
        self.text_model = CLIPTextTransformer(config.text)
        self.vision_model = CLIPVisionTransformer(config.vision)
        self.visual_projection = nn.Linear(config.vision.hidden_size, config.projection_dim, bias=False)
        self.text_projection = nn.Linear(config.text.hidden_size, config.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(2.6592))  # unused by CLIP-SIM; part of the layout

    def image_embeds(self, pixel_values):
        """Prepared ``(n, 3, S, S)`` (see ``preprocess``) -> projected ``(n, projection_dim)``."""
        return self.visual_projection(self.vision_model(pixel_values.to(self.visual_projection.weight)))

    def text_embeds(self, input_ids, end_token):
        """Token ids ``(b, tokens)`` with an ``end_token`` in each row -> projected ``(b, projection_dim)``."""
        return self.text_projection(self.text_model(input_ids.to(self.visual_projection.weight.device), end_token))


def preprocess(frames, image_size):
    """Frames ``(n, 3, h, w)`` in [0, 1] -> CLIP's normalised ``(n, 3, image_size, image_size)``."""
    h, w = frames.shape[-2:]
    scaled = int(image_size * max(h, w) / min(h, w))
    size = (image_size, scaled) if h <= w else (scaled, image_size)
    x = F.interpolate(frames.float(), size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    top, left = (size[0] - image_size) // 2, (size[1] - image_size) // 2
    x = x[..., top : top + image_size, left : left + image_size]
    return (x - x.new_tensor(MEAN)[:, None, None]) / x.new_tensor(STD)[:, None, None]


@lru_cache(maxsize=None)
def byte_to_unicode():
    """GPT-2's reversible map of the 256 bytes to printable characters, so BPE never sees whitespace or control bytes."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(others)}}


SPECIAL = re.compile(r"(<\|startoftext\|>|<\|endoftext\|>)")
CONTRACTION = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d")


def _kind(char):
    category = unicodedata.category(char)[0]
    return category if category in "LN" else "other"


def split_words(text):
    """CLIP's pre-tokenisation, ``'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+``
    with whitespace dropped, after splitting out the special tokens (as
    transformers does); written with ``unicodedata`` categories so that the
    ``regex`` package is not needed."""
    pieces = []
    for part in SPECIAL.split(text):  # special tokens first, as transformers does
        if part in (START, END):
            pieces.append(part)
            continue
        i = 0
        while i < len(part):
            if part[i].isspace():
                i += 1
                continue
            match = CONTRACTION.match(part, i)
            kind = _kind(part[i])
            if match:
                end = match.end()
            elif kind == "N":
                end = i + 1
            else:
                end = i + 1
                while end < len(part) and not part[end].isspace() and _kind(part[end]) == kind:
                    end += 1
            pieces.append(part[i:end])
            i = end
    return pieces


class CLIPTokenizer:
    """CLIP's byte-level BPE over ``vocab`` (token -> id) and ranked ``merges``."""

    def __init__(self, vocab: dict, merges: list, context_length=77):
        self.vocab = vocab
        self.ranks = {tuple(pair): rank for rank, pair in enumerate(merges)}
        self.context_length = context_length
        self.start, self.end = vocab[START], vocab[END]
        self._cache = {}

    @classmethod
    def from_files(cls, vocab_path, merges_path, context_length=77):
        with open(vocab_path, encoding="utf-8") as f:
            vocab = json.load(f)
        with open(merges_path, encoding="utf-8") as f:
            merges = [line.split() for line in f.read().split("\n") if line.strip() and not line.startswith("#version")]
        return cls(vocab, merges, context_length)

    def bpe(self, word):
        """A word's byte characters merged by rank, the last one marked ``</w>``."""
        if word not in self._cache:
            parts = (*word[:-1], word[-1] + "</w>")
            while len(parts) > 1:
                pair = min(zip(parts, parts[1:]), key=lambda p: self.ranks.get(p, math.inf))
                if pair not in self.ranks:
                    break
                merged, i = [], 0
                while i < len(parts):
                    if i + 1 < len(parts) and (parts[i], parts[i + 1]) == pair:
                        merged.append(parts[i] + parts[i + 1])
                        i += 2
                    else:
                        merged.append(parts[i])
                        i += 1
                parts = tuple(merged)
            self._cache[word] = parts
        return self._cache[word]

    def encode(self, text):
        """Ids of ``text`` between start and end tokens, cut to the context length."""
        text = html.unescape(html.unescape(text))
        text = re.sub(r"\s+", " ", unicodedata.normalize("NFC", text)).strip().lower()
        ids = []
        for piece in split_words(text):
            if piece in (START, END):
                ids.append(self.vocab[piece])
                continue
            chars = "".join(byte_to_unicode()[b] for b in piece.encode("utf-8"))
            ids += [self.vocab.get(token, self.end) for token in self.bpe(chars)]  # the end token stands for unknown ones, as in transformers
        return [self.start, *ids[: self.context_length - 2], self.end]

    def __call__(self, captions):
        """Captions -> ``(b, context_length)`` ids, padded with the end token."""
        rows = [self.encode(c) for c in captions]
        return torch.tensor([row + [self.end] * (self.context_length - len(row)) for row in rows])


def load_clip(folder):
    """``(CLIPModel, CLIPTokenizer)`` from a Hugging Face CLIPModel folder, the model in eval mode."""
    name = os.path.basename(os.path.normpath(str(folder)))
    missing = [f for f in FOLDER_FILES if not os.path.isfile(os.path.join(folder, f))]
    if missing:
        raise WeightFileError(f"the CLIP folder {name} lacks {', '.join(missing)} (pickled pytorch_model.bin is never opened). {CONVERSION}")
    try:
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
            values = json.load(f)
        config = CLIPConfig.from_dict(values)
    except (ValueError, TypeError) as e:
        raise WeightFileError(f"{name}/config.json is not a CLIPModel config ({e}). {CONVERSION}") from e
    if values.get("model_type", "clip") != "clip":
        raise WeightFileError(f"{name}/config.json describes a {values['model_type']!r} model, not a CLIPModel (text and vision towers). {CONVERSION}")
    acts = {config.text.hidden_act, config.vision.hidden_act} - set(ACTIVATIONS)
    if acts:
        raise WeightFileError(f"{name}/config.json uses activation {sorted(acts)}; this CLIP reads {sorted(ACTIVATIONS)}: choose a CLIP model that uses them")
    try:
        tokenizer = CLIPTokenizer.from_files(os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt"), config.text.max_position_embeddings)
    except (ValueError, KeyError) as e:
        raise WeightFileError(f"{name}/vocab.json and merges.txt are not CLIP's tokenizer files ({type(e).__name__}: {e}). {CONVERSION}") from e
    if len(tokenizer.vocab) > config.text.vocab_size:
        raise WeightFileError(f"{name}/vocab.json has {len(tokenizer.vocab)} tokens, the model embeds {config.text.vocab_size}: the files come from different models")
    model = load_weights(
        CLIPModel(config),
        os.path.join(folder, "model.safetensors"),
        f"transformers CLIPModel (as {name}/config.json describes)",
        CONVERSION,
        unused=("text_model.embeddings.position_ids", "vision_model.embeddings.position_ids"),
        name=f"{name}/model.safetensors",
    )
    return model, tokenizer


@torch.no_grad()
def frame_text_cosines(model: CLIPModel, tokenizer: CLIPTokenizer, frames, caption, batch_size=32):
    """Cosine between each frame ``(n, 3, h, w)`` in [0, 1] and ``caption``, ``(n,)``."""
    text = F.normalize(model.text_embeds(tokenizer([caption]), tokenizer.end), dim=-1)[0]
    image = torch.cat([model.image_embeds(preprocess(chunk, model.config.vision.image_size)) for chunk in frames.split(batch_size)])
    return (F.normalize(image, dim=-1) @ text).float().cpu()


def clip_similarity(model: CLIPModel, tokenizer: CLIPTokenizer, frames, caption, batch_size=32) -> float:
    """CLIP-SIM of one clip: the mean cosine of its frames with its caption (see the module docstring)."""
    return float(frame_text_cosines(model, tokenizer, frames, caption, batch_size).mean())
