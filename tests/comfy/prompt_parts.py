"""Pieces of API-format prompts that several integration tests build."""

import uuid


def key(name="out"):
    """A capture key used once, so the capture node runs even where the sampler's output is cached."""
    return f"{name}-{uuid.uuid4().hex[:8]}"


def sampler_inputs(model, seed=1):
    """A sampling node's model, the tiny loader's conditionings and fast sampler settings."""
    return {"model": model, "positive": ["1", 1], "negative": ["1", 2], "seed": seed, "steps": 2, "cfg": 4.0, "sampler_name": "euler", "scheduler": "normal"}


IMAGES = {}  # what CaptureImage nodes received, by key


class CaptureImage:
    """Test-only output node: keeps the IMAGE it gets in ``IMAGES[key]``."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",), "key": ("STRING", {"default": "out"})}}

    RETURN_TYPES = ()
    FUNCTION = "capture"
    OUTPUT_NODE = True
    CATEGORY = "testing"

    def capture(self, images, key):
        IMAGES[key] = images.clone()
        return {}
