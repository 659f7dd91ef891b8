"""Loading the whole pack the way ComfyUI loads a custom node at start-up: fast, no
weight file opened, no network. In a fresh process, since the session's ComfyUI
(conftest.py) has loaded the pack already."""

import os

from cpu_comfyui import PACK_NAME
from test_packaging import REPO, check_import, probe

COMFYUI_PATH = os.environ.get("COMFYUI_PATH", "")


def test_pack_loads_fast_without_weights_or_network(tmp_path):
    pack = tmp_path / "custom_nodes" / PACK_NAME
    pack.parent.mkdir()
    pack.symlink_to(REPO)
    setup = f"""
import sys
sys.path[:0] = [{COMFYUI_PATH!r}, {os.path.join(REPO, "tests", "comfy")!r}]
from cpu_comfyui import tolerate_missing_torchvision_ops
tolerate_missing_torchvision_ops()
import comfy.cli_args
comfy.cli_args.args.cpu = True
import asyncio
import nodes
import comfy_config.config_parser  # loaded with ComfyUI's own extra nodes, before any pack
"""
    report = probe(setup, f"result = asyncio.run(nodes.load_custom_node({str(pack)!r}))")
    assert report["result"] == "True", f"ComfyUI did not load the pack:\n{report['log']}"
    check_import(report, "ComfyUI's load of the pack")
