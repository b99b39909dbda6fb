"""What the tests do to Podman behind the platform's back."""

from __future__ import annotations

import subprocess
import time


def force_remove(*containers: str, check: bool = True) -> None:
    """``podman rm --force --volumes``, retried while Podman 4.3 reports a mount busy (the
    same race the container driver retries: containers/podman#11594)."""
    args = ["podman", "rm", "--force", "--volumes", "--time", "0", *containers]
    for attempt in range(1, 5):
        proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
        if proc.returncode == 0 or "device or resource busy" not in proc.stderr:
            break
        time.sleep(0.5 * attempt)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {proc.returncode}: {proc.stderr}")
