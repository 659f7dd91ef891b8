"""What the file checks (vldm_core.file_checks) cost next to loading: the
bundled model is loaded whole, then the checks alone are timed on the same
files: reading each header, parsing and typing its metadata, comparing its
shapes with the module's, and scanning every tensor for NaN and infinity.
(Each module is built once, on the meta device, and filled from the file:
the shape check needs no build of its own.) Target: checks < 10% of the load.

    python benchmarks/file_checks.py [--models models/videoldm-shapes --repeats 5 --threads 2]
"""

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vldm_core.__main__ import BUNDLED  # noqa: E402
from vldm_core.file_checks import config_from, first_non_finite, open_safetensors, state_problems  # noqa: E402
from vldm_core.model_files import FORMAT as MODEL_FORMAT, KINDS  # noqa: E402
from vldm_core.pipeline import load_bundle, read_bundle  # noqa: E402
from vldm_core.unet_layout import UNetLayout  # noqa: E402
from vldm_core.weights import FAMILIES  # noqa: E402


def checks(path):
    """The checks the loaders run on one file before its tensors are read."""
    header = open_safetensors(path, "")
    if header.metadata.get("format") == MODEL_FORMAT:
        config_cls = KINDS[header.metadata["kind"]][1]
        config_from(config_cls, header.json("config"), ValueError)
    else:
        UNetLayout.from_values(header.json("unet_layout"), ValueError)
        config_from(FAMILIES[header.metadata.get("temporal_family", "videoldm")], header.json("temporal_config"), ValueError)
    return state_problems(header.shapes, header.shapes)  # the loaders compare with the module's shapes: the same work


def median_seconds(run, repeats):
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=BUNDLED)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    files = sorted(set(read_bundle(args.models)[1].values()))
    load = median_seconds(lambda: load_bundle(args.models), args.repeats)
    headers = median_seconds(lambda: [checks(path) for path in files], args.repeats)
    tensors = [open_safetensors(path, "").tensors() for path in files]
    scans = median_seconds(lambda: [first_non_finite(state) for state in tensors], args.repeats)
    megabytes = sum(os.path.getsize(path) for path in files) / 1e6
    print(f"{len(files)} files, {megabytes:.1f} MB, {args.threads} threads, median of {args.repeats}")
    print(f"load_bundle (checks included): {load * 1000:.1f} ms")
    print(f"headers, metadata, shapes:     {headers * 1000:.1f} ms")
    print(f"NaN / infinity scan:           {scans * 1000:.1f} ms")
    print(f"checks / load:                 {(headers + scans) / load:.3f} (target < 0.10)")


if __name__ == "__main__":
    main()
