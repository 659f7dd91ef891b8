"""Video LDM ("Align your Latents") for ComfyUI: loaded by ComfyUI as a custom node pack."""

from .nodes import comfy_entrypoint

__all__ = ["comfy_entrypoint"]
