"""Peak memory and time of long rollouts: the Masked Predictor's segments and
the 4x Interpolator's windows.

Both loops keep only the current window on the device and move finished frames
off it, so peak memory should not grow with the video and time should grow
linearly: target peak within 10% of the shortest run's, and a flat time per
sampled frame (windows can differ in length: two key frames make a window of 5). Each run is a fresh process, so its peak is its own: on
a GPU the peak of allocated CUDA memory during the loop; on the CPU (where
finished frames stay in the same memory) the process's peak resident set. Both
are also given above what the loaded model holds (the rollout's working memory),
the stricter comparison.

The model is a small SD-layout UNet with random prediction/interpolation
temporal layers, sampled with vldm_core's guided Euler window sampler (three
videos per forward: text and context guidance).

    python benchmarks/rollout_memory.py [--device cuda --size 64 --channels 128 --window 16]
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from vldm_core.masking import interpolated_length, interpolation_windows  # noqa: E402
from vldm_core.rollout import interpolate, predict_segments  # noqa: E402
from vldm_core.sampling import Denoiser, window_sampler  # noqa: E402
from vldm_core.temporal import TemporalConfig, TemporalLayers  # noqa: E402
from vldm_core.unet import UNetConfig, UNetModel  # noqa: E402
from vldm_core.unet_layout import find_layout, inject  # noqa: E402

TARGET = 1.10
SEGMENTS = (1, 4, 16)
KEY_FRAMES = (2, 8, 32)


def build(args):
    torch.manual_seed(0)
    config = UNetConfig(model_channels=args.channels, channel_mult=(1, 2, 2), num_res_blocks=1, attention_levels=(1, 2), head_dim=32, context_dim=64)
    unet = UNetModel(config).eval()
    layers = TemporalLayers(find_layout(unet), TemporalConfig(context_latent_channels=config.in_channels, interpolation_stage=True))
    inject(unet, layers.by_site())
    return unet.to(args.device)


def keys_per_window(window):
    return (window - 1) // 4 + 1


def memory_in_use(device):
    """Peak so far: allocated CUDA memory since the last reset, or the process's peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_one(args, job, length):
    """One rollout in this process; prints peak bytes, seconds, windows and frames as JSON."""
    device = torch.device(args.device)
    unet = build(args)
    text, no_text = torch.randn(1, 16, 64), torch.zeros(1, 16, 64)
    sample_window = window_sampler(Denoiser(unet), text, no_text, args.steps, cfg=5.0, context_scale=1.5, seed=0, device=device)
    shape = (4, args.size, args.size)
    store = (lambda x: x.cpu()) if device.type == "cuda" else (lambda x: x)

    if job == "predict":
        video, windows, sampled, widest = torch.randn(args.window, *shape), length, length * args.window, args.window

        def rollout():
            return predict_segments(video, length, args.window, 2, sample_window, stage=0, store=store)

        def warm_up():
            predict_segments(video, 1, args.window, 2, sample_window, stage=0, store=store)
    else:
        per_window = keys_per_window(args.window)
        keys, windows = torch.randn(length, *shape), interpolation_windows(length, per_window)
        lengths = [interpolated_length(end - start) for start, end in windows]
        sampled, windows, widest = sum(lengths), len(lengths), max(lengths)

        def rollout():
            return interpolate(keys, per_window, sample_window, stage=0, store=store)

        def warm_up():
            interpolate(keys[:2], per_window, sample_window, stage=0, store=store)

    loaded = memory_in_use(device)
    with torch.no_grad():
        warm_up()
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        out = rollout()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    peak = memory_in_use(device)
    print(json.dumps({"peak": peak, "loaded": loaded, "seconds": seconds, "windows": windows, "sampled": sampled, "widest": widest, "frames": out.shape[0]}))


def measure(args, job, length):
    command = [sys.executable, __file__, "--one", job, str(length)] + [f"--{k}={v}" for k, v in vars(args).items() if k != "one" and v is not None]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def report(title, unit, rows):
    print(f"\n{title}")
    print(f"  {unit:>10} {'frames':>7} {'windows':>8} {'peak MiB':>9} {'above model':>12} {'seconds':>8} {'s/window':>9} {'ms/sampled frame':>17}")
    for length, r in rows:
        per_frame = 1000 * r["seconds"] / r["sampled"]
        above = (r["peak"] - r["loaded"]) / 2**20
        print(f"  {length:>10} {r['frames']:>7} {r['windows']:>8} {r['peak'] / 2**20:>9.1f} {above:>12.1f} {r['seconds']:>8.2f} {r['seconds'] / r['windows']:>9.3f} {per_frame:>17.1f}")
    per_frame = [r["seconds"] / r["sampled"] for _, r in rows]
    # memory follows the widest window, not the video: compare runs whose widest window is the full one
    full = [r for _, r in rows if r["widest"] == max(r["widest"] for _, r in rows)]
    if len(full) < len(rows):
        print(f"  (memory compared over the {len(full)} runs with full {full[0]['widest']}-frame windows; the others have only narrower ones)")
    for name, values in (("peak memory", [r["peak"] for r in full]), ("working memory", [r["peak"] - r["loaded"] for r in full])):
        growth = max(values) / min(values)
        print(f"  {name}, largest / smallest: {growth:.3f} (target <= {TARGET:.2f}: {'met' if growth <= TARGET else 'MISSED'})")
    print(f"  time per sampled frame, longest run / shortest run: {per_frame[-1] / per_frame[0]:.3f} (1.0 is linear time)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=16, help="latent height and width")
    parser.add_argument("--channels", type=int, default=32, help="the UNet's model_channels")
    parser.add_argument("--window", type=int, default=9, help="frames per window (9: 3 key frames per interpolation window)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--one", nargs=2, metavar=("JOB", "LENGTH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.one:
        return run_one(args, args.one[0], int(args.one[1]))

    print(f"device {args.device}, latents {args.size}x{args.size}, UNet channels {args.channels}, window {args.window} frames, {args.steps} steps, 3 videos per forward")
    report("Masked Predictor: segments of (window - 2) new frames after 2 context frames", "segments", [(n, measure(args, "predict", n)) for n in SEGMENTS])
    report(f"4x Interpolator: windows of {keys_per_window(args.window)} key frames", "key frames", [(n, measure(args, "interpolate", n)) for n in KEY_FRAMES])


if __name__ == "__main__":
    main()
