"""A small caption encoder for the pack's own models (the bundled demo model
and tests), standing in for CLIP where no CLIP is loaded.

Words are hashed into a fixed vocabulary (no tokenizer file to ship), embedded
with learned positions and mixed by a few transformer layers; the UNet's
cross-attention reads the per-token outputs, as SD's reads CLIP's.
"""

import re
import zlib
from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class TextEncoderConfig:
    vocab: int = 4096  # hash buckets; id 0 is padding
    max_tokens: int = 16
    dim: int = 64
    layers: int = 2
    heads: int = 4

    def to_dict(self):
        return asdict(self)


WORD = re.compile(r"[a-z0-9]+")  # a caption's words, once lower-cased


def word_ids(caption, config):
    """Lower-case words -> stable hash ids in 1..vocab-1, padded with 0 to max_tokens."""
    words = WORD.findall(caption.lower())[: config.max_tokens]
    ids = [1 + zlib.crc32(w.encode()) % (config.vocab - 1) for w in words]
    return ids + [0] * (config.max_tokens - len(ids))


class TextEncoder(nn.Module):
    def __init__(self, config=TextEncoderConfig()):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab, config.dim, padding_idx=0)
        # at the words' own scale (nn.Embedding draws N(0, 1)): positions 50x smaller
        # were never learned larger, and an encoder that cannot tell "a red circle and
        # a blue square" from "a blue circle and a red square" binds no shape to its colour
        self.position = nn.Parameter(torch.randn(config.max_tokens, config.dim))
        layer = nn.TransformerEncoderLayer(config.dim, config.heads, 4 * config.dim, dropout=0.0, batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(config.dim)

    def forward(self, captions):
        """``captions``: list of strings -> ``(b, max_tokens, dim)``."""
        device = self.position.device
        ids = torch.tensor([word_ids(c, self.config) for c in captions], device=device)
        padding = ids == 0
        padding[:, 0] = False  # an empty caption still has one token to attend to
        return self.norm(self.layers(self.embed(ids) + self.position, src_key_padding_mask=padding))
