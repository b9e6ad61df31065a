"""`funcbp train` with a checkpoint write that pauses between writing the temporary file and
the atomic rename, announcing it on stdout: the fault test SIGKILLs the process right there."""

from __future__ import annotations

import os
import sys
import time

from funcbp import cli
from funcbp.training import checkpoint

_replace = os.replace


def slow_replace(src, dst):
    if str(dst).endswith(".npz"):  # the checkpoint (run.json and metrics.json are JSON)
        print("CHECKPOINT-WRITE", flush=True)
        time.sleep(float(os.environ.get("PAUSE", "3")))
    _replace(src, dst)


checkpoint.os.replace = slow_replace

if __name__ == "__main__":
    sys.exit(cli.main(sys.argv[1:]))
