"""``python3 -m oneplatform.guest``, and ``python3 agent.pyz`` in an image: the guest agent."""

from __future__ import annotations

import sys

from .main import cli

if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
