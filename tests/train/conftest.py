import pytest
import yaml
from ultralytics.utils import ROOT


@pytest.fixture(scope="session")
def coco8_yaml(tmp_path_factory, coco8):
    """coco8 as an Ultralytics dataset YAML with an absolute path (the shared folder has none)."""
    names = yaml.safe_load((ROOT / "cfg/datasets/coco8.yaml").read_text())["names"]
    path = tmp_path_factory.mktemp("data") / "coco8.yaml"
    path.write_text(yaml.safe_dump({"path": str(coco8), "train": "images/train", "val": "images/val", "names": names}))
    return path
