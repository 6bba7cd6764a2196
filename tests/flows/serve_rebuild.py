"""Serve deployment ``rebuild-index/nightly`` (the ``deployment`` step's target in tests).

Run as a process by tests/flows/test_custom_flows.py against the session's Prefect API
(``PREFECT_API_URL`` in its environment): a real Prefect runner that picks up the flow run the
step creates and runs it. ``rebuild`` writes its parameters to ``MARKER`` so the test sees it ran.
"""

from __future__ import annotations

import json
import os
import sys

from prefect import flow


@flow(name="rebuild-index")
def rebuild(reason: str, marker: str, fail: bool = False) -> str:
    with open(marker, "a") as f:
        f.write(json.dumps({"reason": reason}) + "\n")
    if fail:
        raise RuntimeError("index rebuild failed")
    return "rebuilt"


if __name__ == "__main__":
    os.chdir(os.path.dirname(os.path.abspath(__file__)))  # the runner resolves the entrypoint from here
    rebuild.serve(name=sys.argv[1] if len(sys.argv) > 1 else "nightly", print_starting_message=False)
