"""`python pausing_cli.py STEP FILE ARGS...`: `tiviz ARGS...` with accelerate's checkpoint writer patched to stop
for good right after it writes FILE of checkpoint STEP (touching `RUN/.checkpoint-paused` first), so a test can
SIGKILL the trainer mid-checkpoint at a known point. The patch lives in the tests, not in tiviz."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import accelerate.checkpointing

from tiviz.cli import main
from tiviz.training.checkpoint import step_name


def pause_after(step: int, filename: str) -> None:
    write = accelerate.checkpointing.save

    def pausing_save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        write(obj, f, *args, **kwargs)
        path = Path(f)
        if path.name == filename and path.parent.name == f".tmp-{step_name(step)}":
            (path.parent.parent.parent / ".checkpoint-paused").write_text(f"{step}:{filename}\n")
            while True:
                time.sleep(3600)

    accelerate.checkpointing.save = pausing_save  # type: ignore[assignment]


if __name__ == "__main__":
    pause_after(int(sys.argv[1]), sys.argv[2])
    sys.exit(main(sys.argv[3:]))
