"""The shipped workflows in the real ComfyUI frontend: a ComfyUI server (``--cpu``,
loopback) with the pack in its custom_nodes, the frontend it serves
(comfyui-frontend-package) in headless Chromium, each workflow opened from the
template browser's own address. Nothing may be missing: node types, links,
widget values; the prompt the frontend would queue must be the one the
execution tests run. A screenshot of each is taken; ``VLDM_WRITE_PICTURES=1``
stores them as the README's pictures and the template browser's thumbnails.

Needs Chromium (Debian's ``chromium``, or ``VLDM_CHROMIUM``) and the Python
``playwright`` package (no browser download: it drives that Chromium).
"""

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import pytest

from cpu_comfyui import PACK_NAME
from shipped_workflows import FOLDER, GRAPHS, REPO, input_definitions, is_widget, path, place_downloads, to_prompt

CHROMIUM = os.environ.get("VLDM_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
sync_api = pytest.importorskip("playwright.sync_api", reason="the frontend tests need the playwright package (pip install playwright)")
pytestmark = pytest.mark.skipif(not CHROMIUM, reason="the frontend tests need Chromium (apt-get install chromium, or set VLDM_CHROMIUM)")

CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
SETTINGS = {
    "Comfy.TutorialCompleted": True,  # no template browser over the canvas on first start
    "LiteGraph.Canvas.MinFontSizeForLOD": 1,  # draw widgets even zoomed out, for the pictures
    "Comfy.Minimap.Visible": False,
    "Comfy.Graph.CanvasInfo": False,
}
PICTURES = os.path.join(REPO, "docs", "workflows")
CANVAS = (60, 100, 1920, 1080)  # the screenshot's graph, without the frontend's side bar and menu: the thumbnail


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(url, data=None):
    with urllib.request.urlopen(urllib.request.Request(url, data=data, method="POST" if data else "GET"), timeout=10) as response:
        return response.status, response.read()


@pytest.fixture(scope="module")
def server():
    """The URL of a ComfyUI server started as a user starts it, with the pack installed by a link in custom_nodes."""
    base = tempfile.mkdtemp(prefix="vldm-server-")
    os.makedirs(os.path.join(base, "custom_nodes"))
    os.symlink(REPO, os.path.join(base, "custom_nodes", PACK_NAME))
    place_downloads(os.path.join(base, "models"))
    port = free_port()
    log = open(os.path.join(base, "server.log"), "w+")
    process = subprocess.Popen(
        [sys.executable, os.path.join(REPO, "tests", "comfy", "cpu_comfyui.py"), os.environ.get("COMFYUI_PATH", ""), "--cpu", "--listen", "127.0.0.1",
         "--port", str(port), "--base-directory", base, "--disable-auto-launch", "--disable-api-nodes", "--database-url", "sqlite:///:memory:"],
        stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                request(url + "/api/system_stats")
                break
            except OSError:
                if process.poll() is not None:
                    break
                time.sleep(0.5)
        if process.poll() is not None:
            log.seek(0)
            pytest.fail(f"ComfyUI did not start:\n{log.read()[-3000:]}")
        for key, value in SETTINGS.items():
            request(f"{url}/api/settings/{key}", json.dumps(value).encode())
        yield url
    finally:
        process.terminate()
        process.wait(30)
        log.close()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


OPEN_TEMPLATE = """async ([pack, name]) => {
    const workflow = await (await fetch(`api/workflow_templates/${pack}/${name}.json`)).json();
    await window.app.loadGraphData(workflow, true, true, name, {openSource: "template"});
    await new Promise(resolve => requestAnimationFrame(() => requestAnimationFrame(resolve)));
    const graph = window.app.graph;
    const nodes = graph.nodes.map(node => ({
        id: node.id, type: node.type, registered: node.type in LiteGraph.registered_node_types, has_errors: !!node.has_errors,
        size: Array.from(node.size), minimum: Array.from(node.computeSize()),
        widgets_values: node.serialize().widgets_values ?? [],
        widgets: (node.widgets ?? []).map(w => ({name: w.name, value: w.value,
            values: Array.isArray(w.options?.values) ? w.options.values : null, min: w.options?.min ?? null, max: w.options?.max ?? null})),
        inputs: (node.inputs ?? []).map(i => ({name: i.name, type: i.type, link: i.link})),
        outputs: (node.outputs ?? []).map(o => ({type: o.type, links: o.links ?? []})),
    }));
    const links = [...(graph.links instanceof Map ? graph.links.values() : Object.values(graph.links ?? {}))].map(l => (
        {id: l.id, origin: l.origin_id, origin_slot: l.origin_slot, target: l.target_id, target_slot: l.target_slot, type: l.type}));
    const queued = await window.app.graphToPrompt();
    const messages = [...document.querySelectorAll('.p-toast-message, .p-dialog')].map(e => e.innerText.trim()).filter(Boolean);
    return {nodes, links, prompt: queued.output, messages};
}"""


@pytest.fixture
def opened(server, browser):
    """Opens a shipped workflow in a fresh page, as the template browser does; returns what the frontend made of it."""
    pages = []

    def open_workflow(name):
        page = browser.new_page(viewport={"width": 1920, "height": 1080})
        pages.append(page)
        errors = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(server)
        page.wait_for_function("window.app?.graph && window.LiteGraph && window.app.extensionManager", timeout=60_000)
        report = page.evaluate(OPEN_TEMPLATE, [PACK_NAME, name])
        report["page_errors"], report["page"] = errors, page
        return report

    yield open_workflow
    for page in pages:
        page.close()


def test_the_template_browser_lists_every_workflow(server):
    _, body = request(server + "/api/workflow_templates")
    assert sorted(json.loads(body)[PACK_NAME]) == sorted(GRAPHS)


@pytest.mark.parametrize("name", GRAPHS)
def test_workflow_opens_with_nothing_missing(comfy, opened, name, tmp_path):
    with open(path(name)) as f:
        workflow = json.load(f)
    report = opened(name)
    assert report["messages"] == [], "the frontend complained on opening the workflow"
    assert report["page_errors"] == []

    nodes = {node["id"]: node for node in report["nodes"]}
    assert sorted(nodes) == sorted(node["id"] for node in workflow["nodes"])
    assert [n["type"] for n in report["nodes"] if not n["registered"] or n["has_errors"]] == [], "missing node types"

    # links: the same ones, each joining an output and an input of its own type
    assert sorted(tuple(link.values()) for link in report["links"]) == sorted(tuple(link) for link in workflow["links"])
    for link in report["links"]:
        source, target = nodes[link["origin"]], nodes[link["target"]]
        assert source["outputs"][link["origin_slot"]]["type"] == link["type"] == target["inputs"][link["target_slot"]]["type"]
        assert target["inputs"][link["target_slot"]]["link"] == link["id"] and link["id"] in source["outputs"][link["origin_slot"]]["links"]
    classes = comfy.nodes.NODE_CLASS_MAPPINGS
    linked = {(n["id"], i["name"]) for n in report["nodes"] for i in n["inputs"] if i["link"] is not None}
    required = {(n["id"], name) for n in report["nodes"] if n["type"] in classes
                for name, kind, options, needed in input_definitions(classes[n["type"]]) if needed and not is_widget(kind, options)}
    assert required - linked == set(), "required inputs left unconnected"

    # widgets: every stored value kept in its place and allowed by its widget
    for node in workflow["nodes"]:
        loaded = nodes[node["id"]]
        assert loaded["widgets_values"] == node["widgets_values"], f"{node['type']} widgets shifted"
        for widget in loaded["widgets"]:
            if widget["values"] is not None:
                assert widget["value"] in widget["values"], f"{node['type']}.{widget['name']}"
            if widget["min"] is not None and isinstance(widget["value"], (int, float)):
                assert widget["min"] <= widget["value"] <= widget["max"], f"{node['type']}.{widget['name']}"
        assert loaded["size"][0] >= loaded["minimum"][0] and loaded["size"][1] >= loaded["minimum"][1], f"{node['type']} drawn too small"

    # the prompt the frontend would queue is the one test_workflows.py executes
    queued = {key: {"class_type": n["class_type"], "inputs": n["inputs"]} for key, n in report["prompt"].items()}
    assert queued == to_prompt(workflow, classes)

    picture = tmp_path / f"{name}.png"
    report["page"].screenshot(path=str(picture))
    if os.environ.get("VLDM_WRITE_PICTURES"):
        store_pictures(name, picture.read_bytes())


def store_pictures(name, png):
    """The README's picture (docs/workflows/NAME.png) and the template browser's thumbnail (workflows/NAME.jpg)."""
    from PIL import Image

    os.makedirs(PICTURES, exist_ok=True)
    with open(os.path.join(PICTURES, f"{name}.png"), "wb") as f:
        f.write(png)
    image = Image.open(io.BytesIO(png)).convert("RGB").crop(CANVAS)
    image.thumbnail((640, 360))
    image.save(os.path.join(FOLDER, f"{name}.jpg"), quality=85)


@pytest.mark.parametrize("name", GRAPHS)
def test_template_thumbnail_is_served(server, name):
    status, body = request(f"{server}/api/workflow_templates/{PACK_NAME}/{name}.jpg")
    assert status == 200 and body[:3] == b"\xff\xd8\xff", "no thumbnail: rerun the frontend tests with VLDM_WRITE_PICTURES=1"
