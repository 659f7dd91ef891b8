"""How much slower the video UNet is than the image UNet, next to how much more
arithmetic it does.

Video LDM puts a temporal layer after every spatial ResBlock and transformer;
AnimateDiff a motion module after each block of SD 1.5's UNet. Their extra
FLOPs are fixed by the architecture; extra *time* beyond them is the temporal
code's own cost (layout copies, badly shaped kernels, v1's frame-joint
GroupNorms), which we can fix. So this times a small UNet of SD's layout on one
video of T frames, with and without the temporal layers, on the same ``B*T``
batch, and compares the time ratio with the FLOP ratio; target: time ratio /
FLOP ratio <= 1.10.

FlopCounterMode has no formula for the CPU attention kernel
(``aten._scaled_dot_product_flash_attention_for_cpu``) and would count all
attention as zero FLOPs, so we give it the one it uses for the GPU kernels.
Like any FLOP count it leaves out softmax, norms and activations.

    python benchmarks/temporal_overhead.py [--layers videoldm --frames 16 --size 32 --channels 64 --threads 2]
    python benchmarks/temporal_overhead.py --layers animatediff-v2 --device cuda --dtype float16 --size 64 --channels 320
"""

import argparse
import os
import statistics
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from vldm_core.motion_module import MotionModuleConfig  # noqa: E402
from vldm_core.temporal import TemporalConfig, TemporalLayers  # noqa: E402
from vldm_core.unet import UNetConfig, UNetModel  # noqa: E402
from vldm_core.unet_layout import eject, find_layout, inject  # noqa: E402

TARGET = 1.10
# --layers: (placement, config); the UNet for AnimateDiff's modules has SD 1.5's four levels
LAYERS = {
    "videoldm": ("videoldm", TemporalConfig()),
    "animatediff-v1": ("motion_modules", MotionModuleConfig(position_code_frames=24, frame_joint_norms=True)),
    "animatediff-v2": ("motion_modules_mid", MotionModuleConfig()),
    "animatediff-v3": ("motion_modules", MotionModuleConfig()),
}


def cpu_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def count_flops(forward, cpu_attention=True):
    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_attention_flops} if cpu_attention else {}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        forward()
    return counter.get_total_flops()


def paired_times(image, video, repeats, synchronize):
    """Image and video forwards back to back, alternating which goes first, so
    that load from other processes and allocator state hit both alike."""
    pairs = []
    for i in range(repeats):
        seconds = {}
        for forward in (image, video) if i % 2 == 0 else (video, image):
            synchronize()
            start = time.perf_counter()
            forward()
            synchronize()
            seconds[forward] = time.perf_counter() - start
        pairs.append((seconds[image], seconds[video]))
    return pairs


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", choices=LAYERS, default="videoldm", help="Video LDM's temporal layers, or an AnimateDiff motion-module variant")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=32, help="latent height and width")
    parser.add_argument("--channels", type=int, default=64, help="the UNet's model_channels")
    parser.add_argument("--repeats", type=int, default=15, help="timed forward pairs, after 2 warm-up pairs")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    placement, layer_config = LAYERS[args.layers]
    if placement == "videoldm":
        # SD's structure in miniature: two ResBlocks per level, transformers at every level
        # and in the middle, 32-wide heads, a 77-token prompt.
        config = UNetConfig(model_channels=args.channels, channel_mult=(1, 2, 2), num_res_blocks=2, attention_levels=(0, 1, 2), head_dim=32, context_dim=64)
    else:  # SD 1.5's layout: four levels, no attention at the last, 8 heads at the first, its 768-wide prompt
        config = UNetConfig(model_channels=args.channels, channel_mult=(1, 2, 4, 4), num_res_blocks=2, attention_levels=(0, 1, 2), head_dim=args.channels // 8, context_dim=768)
    unet = UNetModel(config).eval()
    layers = TemporalLayers(find_layout(unet, placement), layer_config).eval()
    spatial_params, temporal_params = (sum(p.numel() for p in m.parameters()) for m in (unet, layers))
    unet.to(device, dtype), layers.to(device, dtype)
    x = torch.randn(args.frames, config.in_channels, args.size, args.size, device=device, dtype=dtype)
    timesteps = torch.full((args.frames,), 500, device=device)
    context = torch.randn(args.frames, 77, config.context_dim, device=device, dtype=dtype)

    def image():
        eject(unet)
        return unet(x, timesteps, context, frames=args.frames)

    def video():
        inject(unet, layers)
        return unet(x, timesteps, context, frames=args.frames)

    with torch.inference_mode():
        image_flops, video_flops = count_flops(image), count_flops(video)
        stock_ratio = count_flops(video, cpu_attention=False) / count_flops(image, cpu_attention=False)
        paired_times(image, video, 2, synchronize)
        pairs = paired_times(image, video, args.repeats, synchronize)

    flop_ratio = video_flops / image_flops
    image_s, video_s = (statistics.median(p[i] for p in pairs) for i in (0, 1))
    time_ratio = statistics.median(v / i for i, v in pairs)  # per pair: robust to load drifting between pairs
    all_params = spatial_params + temporal_params
    verdict = "PASS" if time_ratio / flop_ratio <= TARGET else "FAIL"
    where = f"{args.threads} threads" if device.type == "cpu" else str(device)
    print(f"UNet {args.channels} ch x {config.channel_mult}, {len(layers.layers)} {args.layers} layers; one video of {args.frames} frames of {args.size}x{args.size}; {args.dtype}, {where}")
    print(f"image forward    {image_s * 1e3:7.1f} ms  {image_flops / 1e9:6.1f} GFLOP  (median of {args.repeats})")
    print(f"patched forward  {video_s * 1e3:7.1f} ms  {video_flops / 1e9:6.1f} GFLOP")
    print(f"time ratio       {time_ratio:.3f} (median over pairs)")
    print(f"FLOP ratio       {flop_ratio:.3f} (stock FlopCounterMode, blind to CPU attention: {stock_ratio:.3f})")
    print(f"temporal params  {temporal_params / all_params:.1%} of {all_params / 1e6:.2f} M")
    print(f"time/FLOP ratio  {time_ratio / flop_ratio:.3f} (target <= {TARGET:.2f}): {verdict}")


if __name__ == "__main__":
    main()
