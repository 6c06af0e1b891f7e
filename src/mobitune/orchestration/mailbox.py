"""Messages between a sweep and one of its slot runs: small JSON objects in the artifact store.

The sweep posts ``job-0``, ``job-1``, ... (a trial request, or ``{"stop": true}``);
the slot answers each with ``done-<n>`` (``{"failure": ""}`` when it completed).
Numbered keys are written once and never overwritten, so neither side needs
more from the store than put and get. Both sides see the same keys: the store
at ``storage.uri``, or ``local_root`` when the workers share this disk.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from mobitune.storage.records import write_json
from mobitune.storage.stores import open_store

POLL_SECONDS = 0.1  # a slot's look for its next job


class Mailbox:
    def __init__(self, store_uri: str | None, local_root: str | Path, sweep_id: str, slot: str) -> None:
        self.local_root = Path(local_root).resolve()
        self.store = open_store(store_uri, self.local_root)
        self.prefix = f"slots/{sweep_id}/{slot}"

    def send(self, name: str, message: dict[str, Any]) -> None:
        path = self.local_root / self.prefix / f"{name}.json"
        write_json(path, message)
        self.store.put_file(f"{self.prefix}/{name}.json", path)

    def receive(self, name: str) -> dict[str, Any] | None:
        """The message ``name``, or None if it has not been sent."""
        path = self.local_root / self.prefix / f"{name}.json"
        if not self.store.get_file(f"{self.prefix}/{name}.json", path):
            return None
        return json.loads(path.read_text())

    def wait(self, name: str, timeout_s: float) -> dict[str, Any] | None:
        """The message ``name`` once it is sent; None after ``timeout_s`` without it."""
        deadline = time.monotonic() + timeout_s
        while (message := self.receive(name)) is None and time.monotonic() < deadline:
            time.sleep(POLL_SECONDS)
        return message
