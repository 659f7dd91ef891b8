"""Peak memory and time of the pack's long-video loops: the Masked Predictor's
segments, the 4x Interpolator's windows, the Temporal VAE Decode's windows and
the Video Upscaler's windows of tiles.

Each loop keeps only the current window on the device and moves finished
frames off it, so peak memory should not grow with the video and time should
grow linearly: target peak within 10% of the shortest run's, and a flat time
per sampled (decoded, upscaled) frame; windows can differ in length, e.g. two
key frames make a window of 5. Each run is a fresh process, so its peak is its
own: on a GPU the peak of allocated CUDA memory during the loop; on the CPU
(where finished frames stay in the same memory) the process's peak resident
set. Both are also given above what the loaded model holds (and, on the CPU,
the finished video: decoded pixels are 48 times the latents' size): the loop's
working memory, the stricter comparison.

The models are small SD-layout ones with random temporal layers: a UNet sampled
with vldm_core's guided Euler window sampler (three videos per forward: text
and context guidance), a KL-f8 autoencoder with a temporal decoder, and an
x4-upscaler-shaped UNet (latents concatenated with the low-res frames).

    python benchmarks/video_memory.py [--device cuda --size 64 --channels 128 --window 16] [--jobs decode upscale]
"""

import argparse
import json
import os
import resource
import sys
import time

import torch
from fresh_process import run_setting

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from vldm_core.__main__ import DEMO_PROMPT  # noqa: E402
from vldm_core.autoencoder import AutoencoderConfig, AutoencoderKL  # noqa: E402
from vldm_core.masking import interpolated_length, interpolation_windows  # noqa: E402
from vldm_core.pipeline import Settings, load_bundle, plan  # noqa: E402
from vldm_core.reproduce import horizons  # noqa: E402
from vldm_core.rollout import interpolate, predict_segments  # noqa: E402
from vldm_core.sampling import Denoiser, discrete_sigmas, sample_euler, sampling_sigmas, window_sampler  # noqa: E402
from vldm_core.temporal import TemporalConfig, TemporalLayers  # noqa: E402
from vldm_core.temporal_decoder import decode_frames, decode_video, fresh_temporal_decoder  # noqa: E402
from vldm_core.unet import UNetConfig, UNetModel  # noqa: E402
from vldm_core.unet_layout import find_layout, inject  # noqa: E402
from vldm_core.windows import map_video, piece_count  # noqa: E402

TARGET = 1.10
SEGMENTS = (1, 4, 16)
KEY_FRAMES = (2, 8, 32)
FRAMES = (8, 32, 128)
DECODE_OVERLAP = 4
ROLLOUT_JOBS = ("predict", "interpolate")


def build(args):
    torch.manual_seed(0)
    config = UNetConfig(model_channels=args.channels, channel_mult=(1, 2, 2), num_res_blocks=1, attention_levels=(1, 2), head_dim=32, context_dim=64)
    unet = UNetModel(config).eval()
    layers = TemporalLayers(find_layout(unet), TemporalConfig(context_latent_channels=config.in_channels, interpolation_stage=True))
    inject(unet, layers)
    return unet.to(args.device)


def random_rollout_model(args):
    """The random SD-layout UNet (its temporal layers serve both jobs) and stand-in captions."""
    unet = build(args)
    return Denoiser(unet), args.window, 0, torch.randn(1, 16, 64), torch.zeros(1, 16, 64), (4, args.size, args.size)


def bundled_rollout_model(args, job):
    """The bundle's UNet running the job's trained layers, at their window and the bundle's latent size."""
    model = load_bundle(args.bundle, args.device)
    layers = model.prediction if job == "predict" else model.interpolation
    inject(model.unet, layers)
    with torch.no_grad():
        text, no_text = model.text_encoder([DEMO_PROMPT]), model.text_encoder([""])
    shape = (model.unet.config.in_channels, *model.latent_size)
    return Denoiser(model.unet, model.prediction_type), layers.train_frames, layers.config.stage_flag(0), text, no_text, shape


def keys_per_window(window):
    return (window - 1) // 4 + 1


def memory_in_use(device):
    """Peak so far: allocated CUDA memory since the last reset, or the process's peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def rollout_job(args, job, length, device, store):
    denoiser, window, stage, text, no_text, shape = bundled_rollout_model(args, job) if args.bundle else random_rollout_model(args)
    sample_window = window_sampler(denoiser, text, no_text, args.steps, cfg=5.0, context_scale=1.5, seed=0, device=device)
    if job == "predict":
        video = torch.randn(window, *shape)
        return (
            lambda n: predict_segments(video, n, window, 2, sample_window, stage=stage, store=store),
            length, dict(windows=length, sampled=length * window, widest=window),
        )
    per_window = keys_per_window(window)
    lengths = [interpolated_length(end - start) for start, end in interpolation_windows(length, per_window)]
    return (
        lambda n: interpolate(torch.randn(n, *shape), per_window, sample_window, stage=stage, store=store),
        length, dict(windows=len(lengths), sampled=sum(lengths), widest=max(lengths)),
    )


def decode_job(args, length, device, store):
    torch.manual_seed(0)
    vae = AutoencoderKL(AutoencoderConfig(ch=args.channels)).eval().to(device)
    temporal = fresh_temporal_decoder(vae.decoder).to(device).eval()
    latents = torch.randn(length, 4, args.size, args.size)

    def decode(z):
        z = z.to(device)
        return decode_frames(vae.decoder, vae.post_quant_conv(z), temporal, frames=z.shape[0])

    windows = piece_count(length, args.size, args.size, args.window, DECODE_OVERLAP)
    return (
        lambda n: decode_video(decode, latents[:n], args.window, DECODE_OVERLAP, store=store),
        length, dict(windows=windows, sampled=windows * min(args.window, length), widest=min(args.window, length)),
    )


def upscale_job(args, length, device, store):
    """x4-upscaler-shaped sampling: each window of tiles is denoised as one video,
    the UNet seeing the latents next to the low-res frames."""
    torch.manual_seed(0)
    config = UNetConfig(in_channels=7, model_channels=args.channels, channel_mult=(1, 2, 2), num_res_blocks=1, attention_levels=(1, 2), head_dim=32, context_dim=64)
    unet = UNetModel(config).eval()
    inject(unet, TemporalLayers(find_layout(unet)))
    unet.to(device)
    sigmas = sampling_sigmas(discrete_sigmas(), args.steps).to(device)
    text = torch.randn(1, 16, 64, device=device)
    low_res = torch.rand(length, 3, args.size, args.size) * 2 - 1
    tile = max(8, args.size // 2)

    def upscale(piece):
        piece = piece.to(device)
        frames = piece.shape[0]
        with_low_res = lambda x, t, context, frames, masked_context=None: unet(torch.cat([x, piece], 1), t, context, frames)  # noqa: E731
        denoiser = Denoiser(with_low_res)
        noise = torch.randn(frames, 4, *piece.shape[-2:], device=device)
        return sample_euler(lambda x, sigma: denoiser(x, sigma, text.expand(frames, -1, -1), frames), noise, sigmas)

    windows = piece_count(length, args.size, args.size, args.window, DECODE_OVERLAP, tile, tile // 4)
    time_windows = piece_count(length, args.size, args.size, args.window, DECODE_OVERLAP)
    return (
        lambda n: map_video(upscale, low_res[:n], args.window, DECODE_OVERLAP, tile, tile // 4, store=store),
        length, dict(windows=windows, sampled=time_windows * min(args.window, length), widest=min(args.window, length)),
    )


def run_one(args, job, length):
    """One loop in this process; prints peak bytes, seconds, windows and frames as JSON."""
    device = torch.device(args.device)
    store = (lambda x: x.cpu()) if device.type == "cuda" else (lambda x: x)
    if job in ("predict", "interpolate"):
        loop, length, counts = rollout_job(args, job, length, device, store)
        warm_up_length = 1 if job == "predict" else 2
    else:
        loop, length, counts = (decode_job if job == "decode" else upscale_job)(args, length, device, store)
        warm_up_length = min(length, args.window)

    loaded = memory_in_use(device)
    with torch.no_grad():
        loop(warm_up_length)
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        out = loop(length)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    peak = memory_in_use(device)
    # on the CPU the finished video shares the memory measured: count it with the model
    kept = out.numel() * out.element_size() if device.type == "cpu" else 0
    print(json.dumps({"peak": peak, "loaded": loaded + kept, "seconds": seconds, "frames": out.shape[0], **counts}))


def measure(args, job, length):
    # large CPU tensors in their own mappings, returned on free: the resident set
    # then follows live tensors instead of the allocator's fragmentation
    return run_setting(__file__, (job, length), args, skip=("jobs", "seconds"), env={"MALLOC_MMAP_THRESHOLD_": str(2**17)})


def bundle_lengths(args):
    """A ``--seconds`` video of the bundle: its rollout segments (and the 1, 4, 16 that fit),
    its key frames (and the 2, 8, 32 that fit), and the interpolation window."""
    model = load_bundle(args.bundle)
    work = plan(model, Settings(seconds=args.seconds))
    lengths = {"predict": horizons(work.segments), "interpolate": tuple(n for n in KEY_FRAMES if n < work.key_frames) + (work.key_frames,)}
    return lengths, model.interpolation.train_frames


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
    parser.add_argument("--jobs", nargs="+", default=list(JOBS), choices=list(JOBS))
    parser.add_argument("--bundle", help="a model bundle folder: its trained UNet and layers run the rollout jobs, at its window and latent size")
    parser.add_argument("--seconds", type=float, default=120.0, help="with --bundle: the video length whose rollout is measured")
    parser.add_argument("--one", nargs=2, metavar=("JOB", "LENGTH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.one:
        return run_one(args, args.one[0], int(args.one[1]))

    if args.bundle:
        if set(args.jobs) - set(ROLLOUT_JOBS):
            parser.error(f"--bundle measures the rollout jobs ({', '.join(ROLLOUT_JOBS)}): pass --jobs with those, or leave --bundle out")
        lengths_of, interpolation_window = bundle_lengths(args)
        print(f"device {args.device}, bundle {args.bundle}, a {args.seconds:g} s video, {args.steps} steps")
    else:
        lengths_of, interpolation_window = {job: lengths for job, (_, _, lengths) in JOBS.items()}, args.window
        print(f"device {args.device}, latents {args.size}x{args.size}, model channels {args.channels}, window {args.window} frames, {args.steps} steps")
    for job in args.jobs:
        title, unit, _ = JOBS[job]
        lengths = lengths_of[job]
        report(title.format(keys=keys_per_window(interpolation_window), overlap=DECODE_OVERLAP), unit, [(n, measure(args, job, n)) for n in lengths])


JOBS = {
    "predict": ("Masked Predictor: segments of (window - 2) new frames after 2 context frames; guidance: 3 videos per forward", "segments", SEGMENTS),
    "interpolate": ("4x Interpolator: windows of {keys} key frames; guidance: 3 videos per forward", "key frames", KEY_FRAMES),
    "decode": ("Temporal VAE Decode: windows overlapping by {overlap} frames", "frames", FRAMES),
    "upscale": ("Video Upscaler (x4-upscaler-shaped UNet): windows of overlapping tiles, each tile a video", "frames", FRAMES),
}


if __name__ == "__main__":
    main()
