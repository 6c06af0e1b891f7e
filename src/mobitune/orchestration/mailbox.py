"""Messages between a sweep and one of its slot runs: small JSON objects in the artifact store.

The sweep posts ``job-0``, ``job-1``, ... (a trial request, or ``{"stop": true}``);
the slot answers each with ``done-<n>`` (``{"failure": ""}`` when it completed).
Numbered keys are written once and never overwritten. The one key that is:
``beat``, a counter the slot moves on every :data:`BEAT_SECONDS` while its
process lives. It tells the sweep whether a slot is alive without asking
Prefect, which may be the service that is down. Both sides see the same keys:
the store at ``storage.uri``, or ``local_root`` when the workers share this disk
(messages go straight to the store: nothing is mirrored on local disk). A slot
removes its keys when it stops; what a slot that died leaves is removed by the
next workers sweep once it is :data:`STALE_MAILBOX_SECONDS` old.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mobitune.storage.names import NAME_PATTERN, check_name
from mobitune.storage.stores import open_store

POLL_SECONDS = 0.1  # a slot's look for its next job
BEAT_SECONDS = 2.0  # how often a live slot moves its beat on
STALE_MAILBOX_SECONDS = 900  # a slot's keys unchanged this long: no live slot or sweep uses them
MAILBOXES = "slots"


class Mailbox:
    def __init__(
        self, store_uri: str | None, local_root: str | Path, sweep_id: str, slot: str, outage_s: float = 0
    ) -> None:
        """``outage_s``: how long each exchange rides out an S3 endpoint that does not answer. ``sweep_id`` and
        ``slot`` come from flow parameters: checked here, since they name the keys :meth:`remove` deletes."""
        self.store = open_store(store_uri, Path(local_root).resolve(), outage_s)
        self.prefix = f"{MAILBOXES}/{check_name(sweep_id, 'sweep id')}/{check_name(slot, 'slot name')}"

    def send(self, name: str, message: dict[str, Any]) -> None:
        self.store.put_bytes(f"{self.prefix}/{name}.json", json.dumps(message).encode())

    def receive(self, name: str) -> dict[str, Any] | None:
        """The message ``name``, or None if it has not been sent; one that is not a JSON object (written by
        something other than mobitune) as ``{"malformed": ...}``, which the receiver refuses."""
        data = self.store.get_bytes(f"{self.prefix}/{name}.json")
        if data is None:
            return None
        try:
            message = json.loads(data)
        except ValueError:
            message = None
        return message if isinstance(message, dict) else {"malformed": data[:80].decode(errors="replace")}

    def wait(self, name: str, timeout_s: float) -> dict[str, Any] | None:
        """The message ``name`` once it is sent; None after ``timeout_s`` without it."""
        deadline = time.monotonic() + timeout_s
        while (message := self.receive(name)) is None and time.monotonic() < deadline:
            time.sleep(POLL_SECONDS)
        return message

    def beat(self) -> int | None:
        """The slot's beat counter; None before its first beat."""
        message = self.receive("beat")
        return None if message is None else message.get("beat")

    @contextlib.contextmanager
    def beating(self) -> Iterator[None]:
        """Move the beat on every :data:`BEAT_SECONDS` from a thread of this process while the block runs; the
        last beat is written before the block's end returns."""
        stop = threading.Event()

        def beat() -> None:
            count = 0
            while not stop.is_set():
                count += 1
                self.send("beat", {"beat": count})
                stop.wait(BEAT_SECONDS)

        thread = threading.Thread(target=beat, name=f"beat {self.prefix}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def remove(self) -> None:
        """This slot's keys."""
        self.store.delete_prefix(self.prefix)


def remove_stale_mailboxes(store_uri: str | None, local_root: str | Path) -> list[str]:
    """Remove the mailboxes (``slots/<sweep>/<slot>``) whose keys are all older than
    :data:`STALE_MAILBOX_SECONDS`: left by slots that died. Returns them."""
    store = open_store(store_uri, Path(local_root).resolve())
    newest: dict[str, float] = {}
    for key, modified in store.modified_times(MAILBOXES).items():
        parts = key.split("/")
        if len(parts) < 4 or not all(re.fullmatch(NAME_PATTERN, part) for part in parts[1:3]):
            continue  # not a slot's key: nothing a sweep wrote, so nothing it removes
        mailbox = "/".join(parts[:3])
        newest[mailbox] = max(modified, newest.get(mailbox, 0.0))
    stale = sorted(mailbox for mailbox, modified in newest.items() if time.time() - modified > STALE_MAILBOX_SECONDS)
    for mailbox in stale:
        store.delete_prefix(mailbox)
    return stale
