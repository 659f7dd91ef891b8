"""``python -m vldm_core demo``: a video from a prompt with the bundled model, as an mp4.
``python -m vldm_core reproduce``: the paper's claims measured on it (vldm_core.reproduce), as markdown tables.
``python -m vldm_core bundle``: a bundle.json for trained model files, checked by loading them.

Training has its own command, ``python -m vldm_core.train CONFIG.toml``.
"""

import argparse
import os
import sys
import time

import torch

from .pipeline import BUNDLE, PARTS, Settings, generate, load_bundle, plan, write_bundle
from .reproduce import reproduce, ticks_per_scene
from .video_io import write_video

DEMO_PROMPT = "a red circle and a blue square"
BUNDLED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models", "videoldm-shapes")


def progress_bar(label="denoising steps", stream=sys.stderr):
    """``progress(done, total)`` drawing one bar, redrawn in place on a terminal and every 10% in a log."""
    start, interactive, shown = time.perf_counter(), stream.isatty(), [-1]

    def progress(done, total):
        tenth = 10 * done // total
        if not interactive and tenth == shown[0] and done != total:
            return
        shown[0] = tenth
        elapsed = time.perf_counter() - start
        eta = elapsed / done * (total - done)
        line = f"{label} {done}/{total} [{'#' * (24 * done // total):<24}] {elapsed:.0f} s, {eta:.0f} s to go"
        stream.write(f"\r{line}\x1b[K" if interactive else f"{line}\n")
        if interactive and done == total:
            stream.write("\n")
        stream.flush()

    return progress


def demo(args):
    if os.path.exists(args.output) and not args.overwrite:
        raise SystemExit(f"{args.output} exists: choose another --output or pass --overwrite")
    model = load_bundle(args.models, args.device)
    settings = Settings(seconds=args.seconds, seed=args.seed, steps=args.steps, interpolation=args.interpolation, upscale=not args.no_upscale)
    work = plan(model, settings)
    print(f"{work.key_frames} key frames at {model.key_frame_rate:g} fps -> {work.frames} frames at {work.frame_rate:g} fps; {work.total_steps} denoising steps", file=sys.stderr)
    frames, fps = generate(model, args.prompt, settings, progress=progress_bar())
    write_video(args.output, frames, fps)
    print(f"wrote {args.output}: {frames.shape[0]} frames of {frames.shape[-1]}x{frames.shape[-2]} at {fps:g} fps")


def table(args):
    model = load_bundle(args.models, args.device)
    ticks, bar = [0], progress_bar("sampled and measured")

    def tick():
        ticks[0] += 1
        bar(ticks[0], args.videos * ticks_per_scene(model))

    tables = reproduce(model, args.videos, Settings(steps=args.steps, seconds=args.seconds), progress=tick)
    print(f"{args.videos} held-out scenes of the world, {args.steps} denoising steps, {args.seconds:g} s rollouts, bundle {os.path.basename(os.path.normpath(args.models))}\n")
    print("\n\n".join(t.markdown() for t in tables))


def bundle(args):
    """Write bundle.json, then load the bundle as the demo would: one that does
    not load is not left behind (an earlier bundle.json comes back)."""
    path = os.path.join(args.folder, BUNDLE)
    earlier = None
    if os.path.exists(path):
        if not args.overwrite:
            raise SystemExit(f"{path} exists: pass --overwrite to write it again")
        with open(path, "rb") as f:
            earlier = f.read()
    files = dict(part.split("=", 1) for part in args.files)
    unknown = sorted(set(files) - set(PARTS))
    if unknown:
        raise SystemExit(f"unknown parts {unknown}: a bundle names {', '.join(PARTS)}")
    write_bundle(args.folder, files, args.key_frame_rate, args.frame_size)
    try:
        load_bundle(args.folder)
    except Exception:
        if earlier is None:
            os.remove(path)
        else:
            with open(path, "wb") as f:
                f.write(earlier)
        raise
    print(f"wrote {path}")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m vldm_core", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("demo", help="generate a video with the bundled model (or another bundle)")
    run.add_argument("--prompt", default=DEMO_PROMPT, help="what the video shows, e.g. 'a green triangle and a yellow circle'")
    run.add_argument("--seconds", type=float, default=10.0, help="length of the video")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--output", default="demo.mp4", help="the mp4 to write (never written over without --overwrite)")
    run.add_argument("--overwrite", action="store_true")
    run.add_argument("--steps", type=int, default=Settings.steps, help="denoising steps of each window")
    run.add_argument("--interpolation", type=int, default=Settings.interpolation, choices=(1, 4, 16), help="frame-rate multiplier")
    run.add_argument("--no-upscale", action="store_true", help="stop at the base resolution")
    claims = commands.add_parser("reproduce", help="the paper's claims measured on the bundled model (or another bundle)")
    claims.add_argument("--videos", type=int, default=8, help="held-out scenes each row averages over")
    claims.add_argument("--steps", type=int, default=Settings.steps, help="denoising steps of each window")
    claims.add_argument("--seconds", type=float, default=120.0, help="length of the rollouts the last rollout rows score")
    for command in (run, claims):
        command.add_argument("--models", default=BUNDLED, help="a model bundle folder (bundle.json); default: the bundled model")
        command.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    assemble = commands.add_parser("bundle", help="write a bundle.json for trained model files in one folder")
    assemble.add_argument("folder", help="the folder holding the model files")
    assemble.add_argument("files", nargs="+", metavar="PART=FILE", help=f"each part's file, relative to the folder; parts: {', '.join(PARTS)}")
    assemble.add_argument("--key-frame-rate", type=float, required=True, help="frames per second the key-frame layers were trained at")
    assemble.add_argument("--frame-size", type=int, nargs=2, required=True, metavar=("HEIGHT", "WIDTH"), help="the frame size the image model was trained at")
    assemble.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    {"demo": demo, "reproduce": table, "bundle": bundle}[args.command](args)


if __name__ == "__main__":
    main()
