"""Process-wide Ultralytics settings yolo-prune relies on: never reach the network."""

import os


def go_offline():
    """Stop Ultralytics from syncing, checking for updates or downloading fonts/weights.

    Must run before `ultralytics` is first imported to take full effect (YOLO_OFFLINE is read at import).
    """
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ultralytics.utils import SETTINGS

    if SETTINGS.get("sync", True):
        SETTINGS.update({"sync": False})
