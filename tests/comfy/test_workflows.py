"""The shipped workflows: their files match the nodes' inputs as they are now,
and each one, turned into an API prompt as the frontend queues it, runs in a
real ComfyUI on the CPU with the bundled model and writes its videos."""

import glob
import json
import os
import re

import av
import pytest

from shipped_workflows import DOWNLOADS, FOLDER, GRAPHS, build, path, text, to_prompt

# What each workflow's Save Video nodes write: {filename prefix: (frames, width and height, frames per second)}.
VIDEOS = {
    "1_text_to_video_key_frames": {"key_frames": (8, 32, 2)},
    "2_long_video_masked_predictor": {"long_video": (26, 32, 2)},
    "3_interpolation_4x_16x": {"interpolated_4x": (29, 32, 8), "interpolated_16x": (113, 32, 32)},
    "4_temporal_vae_decode": {"temporal_decoder": (29, 32, 8), "frame_by_frame": (29, 32, 8)},
    "5_video_upscale": {"upscaled": (8, 128, 2)},
    "6_full_pipeline_mp4": {"full_pipeline": (101, 128, 8)},
    "7_own_sd_checkpoint": {"own_checkpoint": (29, 32, 8)},
}


def test_every_workflow_is_shipped_and_checked():
    shipped = {os.path.splitext(os.path.basename(p))[0] for p in glob.glob(os.path.join(FOLDER, "*.json"))}
    assert shipped == set(GRAPHS) == set(VIDEOS) | set(DOWNLOADS)


@pytest.mark.parametrize("name", GRAPHS)
def test_workflow_file_matches_the_nodes(comfy, name):
    """A node input added, renamed or moved shifts the widget values of every saved
    workflow: the shipped files are rebuilt from their graphs and must not change."""
    built = text(build(GRAPHS[name], comfy.nodes.NODE_CLASS_MAPPINGS, name))
    if os.environ.get("VLDM_WRITE_WORKFLOWS"):
        with open(path(name), "w") as f:
            f.write(built)
    with open(path(name)) as f:
        assert f.read() == built, f"workflows/{name}.json no longer matches the nodes; if the change is intended, " \
                                  "rebuild with VLDM_WRITE_WORKFLOWS=1 and say in the changelog that older workflows shift"


def videos_written(result):
    """{filename prefix: path} of the files the run's Save Video nodes reported."""
    files = {}
    for data in result.events("executed"):
        for image in (data.get("output") or {}).get("images", []):
            prefix = re.sub(r"_\d+_?\.\w+$", "", image["filename"])
            files[prefix] = os.path.join(image["type"], image["subfolder"], image["filename"])
    return files


def video_shape(file):
    with av.open(file) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        return frames, stream.width, stream.height, float(stream.average_rate)


@pytest.mark.parametrize("name", VIDEOS)
def test_workflow_runs_to_its_videos(comfy, name):
    with open(path(name)) as f:
        prompt = to_prompt(json.load(f), comfy.nodes.NODE_CLASS_MAPPINGS)
    result = comfy.run(prompt)
    assert result.ok, result.events("execution_error")
    written = videos_written(result)
    assert set(written) == set(VIDEOS[name])
    for prefix, (frames, size, fps) in VIDEOS[name].items():
        file = os.path.join(comfy.folder_paths.get_output_directory(), os.path.relpath(written[prefix], "output"))
        assert video_shape(file) == (frames, size, size, fps), prefix


@pytest.mark.parametrize("name", DOWNLOADS)
def test_a_workflow_for_downloaded_files_validates_and_names_them_in_its_note(comfy, name):
    """Its pack nodes run in test_motion_modules.py on a tiny model; here the graph
    as shipped is checked to be a valid prompt once the files are in place."""
    import asyncio

    with open(path(name)) as f:
        workflow = json.load(f)
    valid = asyncio.run(comfy.execution.validate_prompt("check", to_prompt(workflow, comfy.nodes.NODE_CLASS_MAPPINGS), None))
    assert valid[0], valid[1:]
    note = next(n for n in workflow["nodes"] if n["type"] == "MarkdownNote")["widgets_values"][0]
    for folder, names in DOWNLOADS[name].items():
        assert f"models/{folder}" in note and all(f"`{n}`" in note for n in names)
