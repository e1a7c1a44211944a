"""Dataset YAMLs as Ultralytics reads them: the demo set by default, relative roots made absolute, one clear error."""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

from .errors import YoloPruneError


def dataset_yaml(data) -> Path:
    """The dataset YAML to use: `data`, or the embedded demo dataset when None."""
    if data is None:
        from .demo_data import ensure_demo_dataset

        return ensure_demo_dataset()
    file = Path(data)
    if file.suffix not in (".yaml", ".yml") or not file.is_file():
        raise YoloPruneError(
            f"Dataset '{data}' is not an existing .yaml file; give an Ultralytics dataset YAML (or omit --data to use "
            "the embedded demo dataset)."
        )
    return file


@contextlib.contextmanager
def ultralytics_yaml(file: Path):
    """Yield a YAML Ultralytics resolves as the user meant: a relative `path:` is taken from the YAML's own folder.

    Ultralytics resolves a relative `path:` against the working directory or its datasets folder, so `path: .` in a
    YAML that sits inside its dataset only works from that folder. When the folder exists beside the YAML, a temp copy
    with the absolute root is handed over instead; the user's file is never modified.
    """
    from ultralytics.utils import YAML

    cfg = YAML.load(file)
    root = cfg.get("path")
    if root is None or Path(root).is_absolute() or not (file.parent / root).is_dir():
        yield file
        return
    cfg["path"] = str((file.parent / root).resolve())
    with tempfile.TemporaryDirectory(prefix="yolo_prune_data_") as tmp:
        copy = Path(tmp) / file.name
        YAML.save(copy, cfg)
        yield copy


def load_dataset(file: Path) -> dict:
    """Ultralytics' checked dataset dict (absolute split paths, names), or one clear error."""
    from ultralytics.data.utils import check_det_dataset

    try:
        return check_det_dataset(str(file), autodownload=False)
    except Exception as e:  # missing images, bad keys: Ultralytics raises several types with emoji messages
        raise YoloPruneError(f"Dataset '{file}' cannot be used: {str(e).strip().splitlines()[0]}") from None


def dataset_labels(data, split: str = "val") -> tuple[list[dict], dict]:
    """Ultralytics' parsed labels of one split (im_file, shape, cls, normalised xywh bboxes) and the class names."""
    from ultralytics.data.dataset import YOLODataset

    with ultralytics_yaml(dataset_yaml(data)) as file:
        info = load_dataset(file)
        if not info.get(split):
            raise YoloPruneError(f"Dataset '{data}' has no '{split}' split.")
        dataset = YOLODataset(img_path=info[split], data=info, augment=False, task="detect")
    return dataset.labels, info["names"]
