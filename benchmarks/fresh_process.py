"""Each benchmark setting runs in a fresh process, so that its peak memory is
its own and no setting warms caches for the next."""

import json
import os
import subprocess
import sys


def run_setting(script, setting, args, skip=(), env=None):
    """Run ``script --one SETTING...`` with the parent's ``args`` (less ``skip``) and
    return the JSON object the child prints last."""
    forwarded = [f"--{k}={v}" for k, v in vars(args).items() if k not in ("one", *skip) and v is not None]
    command = [sys.executable, script, "--one", *map(str, setting), *forwarded]
    result = subprocess.run(command, capture_output=True, text=True, check=True, env={**os.environ, **(env or {})})
    return json.loads(result.stdout.strip().splitlines()[-1])
