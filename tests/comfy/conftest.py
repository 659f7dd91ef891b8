"""Runs the pack inside a real ComfyUI (found through COMFYUI_PATH) on the CPU.

ComfyUI is imported once per test session, in this process: ``--cpu`` is set
before ``comfy.model_management`` loads, the pack is loaded the way ComfyUI
loads any custom node (from a ``custom_nodes`` folder), and prompts run through
``execution.validate_prompt`` and ``PromptExecutor``.
"""

import asyncio
import os
import sys
import tempfile
import uuid

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACK_NAME = "ComfyUI-VideoLDM"
COMFYUI_PATH = os.environ.get("COMFYUI_PATH", "")

if not os.path.isfile(os.path.join(COMFYUI_PATH, "comfy", "model_management.py")):
    collect_ignore_glob = ["test_*.py"]
    print(f"tests/comfy skipped: COMFYUI_PATH={COMFYUI_PATH!r} is not a ComfyUI checkout", file=sys.stderr)


def _tolerate_missing_torchvision_ops():
    """The registry's torchvision is a CUDA build; with CPU torch its fake-kernel
    registrations name ops that did not load. ComfyUI needs only its transforms."""
    import torch.library

    real = torch.library.register_fake

    def tolerant(register):
        def apply(fn):
            try:
                return register(fn)
            except RuntimeError:  # the op's C++ kernel is missing from this torchvision build
                return fn

        return apply

    def register_fake(op, func=None, /, **kwargs):
        if func is not None:
            return tolerant(lambda fn: real(op, fn, **kwargs))(func)
        return tolerant(real(op, **kwargs))

    torch.library.register_fake = register_fake
    try:
        import torchvision  # noqa: F401
    finally:
        torch.library.register_fake = real


class ServerStub:
    """What PromptExecutor needs of a PromptServer: it records the messages."""

    def __init__(self):
        self.client_id = None
        self.last_node_id = None
        self.messages = []

    def send_sync(self, event, data, sid=None):
        self.messages.append((event, data))


class Comfy:
    def __init__(self):
        sys.path.insert(0, COMFYUI_PATH)
        _tolerate_missing_torchvision_ops()
        import comfy.cli_args

        comfy.cli_args.args.cpu = True
        comfy.cli_args.args.disable_all_custom_nodes = False
        import execution
        import folder_paths
        import nodes

        self.nodes, self.execution, self.folder_paths = nodes, execution, folder_paths
        self.root = tempfile.mkdtemp(prefix="vldm-comfy-")
        folder_paths.set_output_directory(os.path.join(self.root, "output"))
        folder_paths.set_temp_directory(os.path.join(self.root, "temp"))
        folder_paths.models_dir = os.path.join(self.root, "models")
        custom_nodes = os.path.join(self.root, "custom_nodes")
        os.makedirs(custom_nodes)
        self.pack_dir = os.path.join(custom_nodes, PACK_NAME)
        os.symlink(REPO, self.pack_dir)
        self.loaded = asyncio.run(nodes.load_custom_node(self.pack_dir))

    def add_nodes(self, mapping):
        self.nodes.NODE_CLASS_MAPPINGS.update(mapping)

    def run(self, prompt):
        """Validate and execute an API-format prompt; returns (executor, server stub)."""
        prompt_id = str(uuid.uuid4())
        valid = asyncio.run(self.execution.validate_prompt(prompt_id, prompt, None))
        if not valid[0]:
            raise AssertionError(f"prompt invalid: {valid[1]} {valid[3]}")
        server = ServerStub()
        executor = self.execution.PromptExecutor(server, cache_type=self.execution.CacheType.NONE if hasattr(self.execution, "CacheType") else False)
        executor.execute(prompt, prompt_id, {}, valid[2])
        return executor, server


@pytest.fixture(scope="session")
def comfy():
    return Comfy()
