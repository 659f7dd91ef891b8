"""A real ComfyUI on a CPU-only torch, in-process (``tolerate_missing_torchvision_ops``)
or as a server: ``python tests/comfy/cpu_comfyui.py COMFYUI_PATH [main.py arguments]``
runs ComfyUI's own ``main.py`` after the same fix."""

import os
import runpy
import sys

PACK_NAME = "ComfyUI-VideoLDM"  # the folder the pack is installed as, in custom_nodes


def tolerate_missing_torchvision_ops():
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


if __name__ == "__main__":
    comfyui_path, arguments = os.path.abspath(sys.argv[1]), sys.argv[2:]
    tolerate_missing_torchvision_ops()
    os.chdir(comfyui_path)
    sys.path.insert(0, comfyui_path)
    sys.argv = [os.path.join(comfyui_path, "main.py"), *arguments]
    runpy.run_path(sys.argv[0], run_name="__main__")
