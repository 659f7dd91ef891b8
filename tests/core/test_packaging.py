"""The pack as the Comfy Registry and ComfyUI-Manager see it: pyproject.toml passes
the registry's checks, requirements.txt installs what the code imports, and the
pack imports fast without touching weights or the network.

The rules are those of the registry (docs.comfy.org/registry/specifications),
of its backend (Comfy-Org/registry-backend, mapper/node.go and publisher.go) and
of the publishing CLI (Comfy-Org/comfy-cli, comfy_cli/registry/config_parser.py).
``packaging`` comes with pytest.
"""

import ast
import glob
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGES = ("nodes", "vldm_core")
COMFYUI_MODULES = {"comfy", "comfy_api", "comfy_execution", "folder_paths", "nodes", "node_helpers", "server", "execution", "latent_preview"}
FRONTEND = "comfyui-frontend-package"
# comfy-cli's reading of requires-comfyui and the frontend range: each comma-separated
# part an optional operator and X.Y.Z[-suffix]; anything else is dropped with a warning.
COMFY_VERSION_PART = re.compile(r"^(?:(==|>=|<=|!=|~=|>|<|<>|=)\s*)?(\d+\.\d+\.\d+(?:-[a-zA-Z0-9]+)?)?$")
SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$")
IMPORT_SECONDS = 1.0


def pyproject():
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def requirements_txt():
    """Requirement lines as pip reads them: '#' after whitespace starts a comment."""
    with open(os.path.join(REPO, "requirements.txt"), encoding="utf-8") as f:
        lines = [re.sub(r"(^|\s)#.*$", "", line).strip() for line in f]
    return [Requirement(line) for line in lines if line and not line.startswith("-")]


def by_name(requirements):
    found = {}
    for r in requirements:
        assert canonicalize_name(r.name) not in found, f"{r.name} named twice"
        found[canonicalize_name(r.name)] = r
    return found


def declared():
    return by_name(Requirement(d) for d in pyproject()["project"]["dependencies"])


def comfy_version_range(text):
    """True when comfy-cli keeps ``text`` and it is a PEP 440 specifier set."""
    SpecifierSet(text)  # raises InvalidSpecifier
    return bool(text) and all(COMFY_VERSION_PART.match(part.strip()) for part in text.split(","))


# ------------------------------------------------------------- pyproject.toml


def test_node_id_follows_registry_rules():
    """The id is permanent once published and is what users type to install."""
    name = pyproject()["project"]["name"]
    assert len(name) < 100
    # ASCII letters, digits and single '-', '_' or '.' between them, starting with a letter.
    assert re.fullmatch(r"[A-Za-z](?:[A-Za-z0-9]|[._-](?=[A-Za-z0-9]))*", name), name
    assert "comfyui" not in name.lower(), "the registry's best practice: no 'ComfyUI' in the node id"


def test_project_fields_are_well_formed():
    project = pyproject()["project"]
    assert SEMVER.match(project["version"]), project["version"]
    license = project["license"]
    assert isinstance(license, str) or set(license) & {"file", "text"}, "license = {file = ...} or {text = ...}"
    if isinstance(license, dict) and "file" in license:
        assert os.path.isfile(os.path.join(REPO, license["file"]))
    assert project["description"].strip()
    assert re.fullmatch(r"https://[\w.-]+/\S+", project["urls"]["Repository"]), "the registry links the node to it"
    assert SpecifierSet(project["requires-python"]).contains(f"{sys.version_info.major}.{sys.version_info.minor}")
    operating_systems = [c for c in project.get("classifiers", []) if c.startswith("Operating System :: ")]
    assert all(re.match(r"Operating System :: (Microsoft|POSIX|MacOS|OS Independent)", c) for c in operating_systems)


def test_tool_comfy_fields_are_well_formed():
    comfy = pyproject()["tool"]["comfy"]
    assert re.fullmatch(r"[a-z][a-z0-9-]*", comfy["PublisherId"]), comfy["PublisherId"]
    assert comfy["DisplayName"].strip()
    icon = comfy.get("Icon", "")
    assert icon == "" or re.fullmatch(r"https://\S+\.(svg|png|jpe?g|gif)", icon, re.IGNORECASE), icon
    assert comfy_version_range(comfy["requires-comfyui"]), comfy["requires-comfyui"]


def test_frontend_range_is_kept_by_the_registry():
    """comfy-cli strips the frontend line from the dependencies by its prefix and keeps
    the rest as the supported range only if every version in it is X.Y.Z."""
    lines = [d for d in pyproject()["project"]["dependencies"] if d.startswith(FRONTEND)]
    assert len(lines) == 1
    assert comfy_version_range(lines[0].removeprefix(FRONTEND)), lines[0]


def test_bundled_files_ship_in_the_registry_archive():
    """The archive is the git-tracked files less .comfyignore; ``includes`` would only
    add git-ignored folders. So the bundled model must be tracked, and nothing it or
    the workflows (and their template thumbnails) need may be ignored."""
    if not (os.path.exists(os.path.join(REPO, ".git")) and shutil.which("git")):
        pytest.skip("not a git checkout: the archive is made from one")
    git = ["git", "-C", REPO]
    bundle = os.path.join("models", "videoldm-shapes")
    with open(os.path.join(REPO, bundle, "bundle.json")) as f:
        model_files = sorted({os.path.join(bundle, name) for name in ["bundle.json", *json.load(f)["files"].values()]})
    tracked = set(subprocess.run([*git, "ls-files", "-z", bundle], capture_output=True, text=True, check=True).stdout.split("\0"))
    assert set(model_files) <= tracked, f"not git-tracked: {set(model_files) - tracked}"
    workflows = sorted(os.path.relpath(p, REPO) for pattern in ("*.json", "*.jpg") for p in glob.glob(os.path.join(REPO, "workflows", pattern)))
    comfyignore = os.path.join(REPO, ".comfyignore")
    excludes = comfyignore if os.path.isfile(comfyignore) else os.devnull
    ignored = subprocess.run([*git, "-c", f"core.excludesFile={excludes}", "check-ignore", "--no-index", "--", *model_files, *workflows], capture_output=True, text=True)
    assert ignored.returncode == 1, f"left out of the archive by .gitignore / .comfyignore:\n{ignored.stdout}{ignored.stderr}"


# ------------------------------------------------------------- requirements


def test_requirements_txt_matches_pyproject():
    """ComfyUI-Manager installs requirements.txt, the registry lists pyproject's
    dependencies: the same packages and ranges, except torch (left unpinned in
    requirements.txt so pip keeps ComfyUI's build) and the frontend range."""
    in_pyproject, in_txt = declared(), by_name(requirements_txt())
    in_pyproject.pop(FRONTEND)
    assert FRONTEND not in in_txt
    assert set(in_txt) == set(in_pyproject)
    assert str(in_txt.pop("torch").specifier) == ""
    in_pyproject.pop("torch")
    assert {n: r.specifier for n, r in in_txt.items()} == {n: r.specifier for n, r in in_pyproject.items()}
    assert all(not r.marker and not r.url and not r.extras for r in in_txt.values())


def import_statements(package):
    """(path, node) of every import statement in ``package``'s code, function-level (lazy) ones included."""
    for path in glob.glob(os.path.join(REPO, package, "**", "*.py"), recursive=True):
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                yield path, node


def third_party_imports():
    """{top-level module: [where]} for every absolute import in the pack's code,
    standard library and ComfyUI left out."""
    found = {}
    for package in PACKAGES:
        for path, node in import_statements(package):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in COMFYUI_MODULES and top not in PACKAGES:
                    found.setdefault(top, []).append(f"{os.path.relpath(path, REPO)}:{node.lineno}")
    return found


def test_every_import_is_a_declared_requirement():
    """Installing the declared requirements is all the pack needs; and nothing is
    declared that the code no longer imports."""
    distributions = importlib.metadata.packages_distributions()
    requirements = set(declared()) - {FRONTEND}
    used = set()
    for module, where in third_party_imports().items():
        providers = {canonicalize_name(d) for d in distributions.get(module, [])}
        assert providers, f"{module} (imported at {where[0]}) is not installed, so not mapped to a distribution"
        assert providers & requirements, f"{module} (imported at {where[0]}) comes from {providers}, which no requirement names"
        used |= providers & requirements
    assert used == requirements, f"declared but never imported: {requirements - used}"


# ------------------------------------------------------------- import cost

# Run in a fresh interpreter before the timed import: records every weight file
# opened (Python's open through the audit hook; safetensors opens files in Rust,
# so its entry points are wrapped) and every network socket or lookup.
GUARD = """
import json, os, socket, sys, time
import safetensors, safetensors.torch

WEIGHTS = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
weights, network = [], []


def note(path):
    if isinstance(path, (str, bytes, os.PathLike)) and os.fsdecode(path).lower().endswith(WEIGHTS):
        weights.append(os.fsdecode(path))


def audit(event, args):
    if event == "open":
        note(args[0])
    elif event in ("socket.connect", "socket.getaddrinfo", "socket.gethostbyname") or (
        event == "socket.__new__" and args[1] in (socket.AF_INET, socket.AF_INET6)
    ):
        network.append(event)


def spy(load):
    def spied(path, *args, **kwargs):
        note(path)
        return load(path, *args, **kwargs)

    return spied


safetensors.safe_open = safetensors.torch.safe_open = spy(safetensors.safe_open)
safetensors.torch.load_file = spy(safetensors.torch.load_file)
sys.addaudithook(audit)
start = time.perf_counter()
"""
REPORT = """
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "weights": weights, "network": network, "result": repr(result)}))
"""


def probe(setup, statement):
    """Runs ``setup`` (untimed), then ``statement`` (which sets ``result``) under the
    guard, in a subprocess; returns its report."""
    code = "\n".join([setup, GUARD, statement, REPORT])
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "log": done.stderr[-4000:]}


def check_import(report, what):
    print(f"{what}: {report['seconds'] * 1000:.0f} ms")
    assert not report["weights"], f"{what} opened weight files: {report['weights']}"
    assert not report["network"], f"{what} used the network: {report['network']}"
    assert report["seconds"] < IMPORT_SECONDS, f"{what} took {report['seconds']:.2f} s"


def modules_the_nodes_use():
    """vldm_core modules imported by nodes/ (``from ..vldm_core.x import ...``)."""
    modules = {"vldm_core"}
    for _, node in import_statements("nodes"):
        if isinstance(node, ast.ImportFrom) and node.level == 2 and (node.module or "").startswith("vldm_core"):
            modules.add(node.module)
    return sorted(modules)


def test_core_import_is_fast_and_loads_nothing():
    """ComfyUI imports every pack at start-up, with torch already loaded; the pack's
    own share must stay small and must not read models or reach out."""
    modules = modules_the_nodes_use()
    assert len(modules) > 5, modules
    report = probe("import torch", "import " + ", ".join(modules) + "\nresult = None")
    check_import(report, f"import of {len(modules)} vldm_core modules")


def test_guard_sees_weights_and_network(tmp_path):
    """The import checks pass only if the guard would have caught something:
    safetensors' loaders, torch.load (Python's open) and a TCP connect."""
    safetensors_file, torch_file = str(tmp_path / "w.safetensors"), str(tmp_path / "w.pt")
    setup = f"""
import safetensors.torch, socket, torch
safetensors.torch.save_file({{"w": torch.zeros(1)}}, {safetensors_file!r})
torch.save(torch.zeros(1), {torch_file!r})
"""
    statement = f"""
safetensors.torch.load_file({safetensors_file!r})
with safetensors.safe_open({safetensors_file!r}, "pt"):
    pass
torch.load({torch_file!r})
try:
    socket.create_connection(("127.0.0.1", 9), timeout=1)
except OSError:
    pass
result = None
"""
    report = probe(setup, statement)
    assert {os.path.basename(p) for p in report["weights"]} == {"w.safetensors", "w.pt"}, report["weights"]
    assert report["weights"].count(safetensors_file) >= 2, report["weights"]
    assert "socket.connect" in report["network"], report["network"]
