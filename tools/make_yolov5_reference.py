"""Make tests/fixtures/yolov5n_ref.npz: outputs of the ORIGINAL YOLOv5 code on yolov5n.pt, for the importer test.

Not part of the package or the tests: it needs the original YOLOv5 classes, which yolo-prune never imports. Run it
once in a throwaway environment outside the repository:

    python -m venv --system-site-packages /tmp/v5env
    /tmp/v5env/bin/pip install yolov5==7.0.14 --no-deps
    /tmp/v5env/bin/pip install pandas tqdm seaborn        # what yolov5.models.* imports beyond our own deps
    /tmp/v5env/bin/python tools/make_yolov5_reference.py  # from the repository root

Inputs: the images below from ../shared/data/coco128/images/train2017, each letterboxed to 640x640 by `letterbox`
(the same code is in tests/nn/test_importer.py; the fixture stores a checksum of each input so a drift is caught).
The model runs unfused, in float32 (`.float()` of the FP16 checkpoint), in eval mode, on CPU.

Stored per image (the full output is 25200x85 floats per image, too large for the repository):
    top_idx / top_rows: the 100 rows of the decoded output with the highest objectness, all 85 columns
                        (x, y, w, h in input pixels, objectness, 80 class probabilities)
    col_sum / col_abs:  float64 column sums of the full decoded output, and of its absolute values
    raw_sum / raw_abs:  float64 sums of each level's raw (pre-sigmoid) map (bs, na, ny, nx, 85), and of |map|
    input_sum:          float64 sum of the uint8 letterboxed image, to check the test preprocesses identically
"""

from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
IMAGES = ["000000000009.jpg", "000000000025.jpg", "000000000030.jpg", "000000000034.jpg"]
SIZE = 640
TOP = 100


def letterbox(path: Path, size: int = SIZE) -> np.ndarray:
    """Resize the long side to `size` (bilinear), pad centred to size x size with grey 114; RGB uint8 HWC."""
    img = cv2.imread(str(path))
    h, w = img.shape[:2]
    r = size / max(h, w)
    nh, nw = round(h * r), round(w * r)
    img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
    top, left = (size - nh) // 2, (size - nw) // 2
    out = np.full((size, size, 3), 114, np.uint8)
    out[top : top + nh, left : left + nw] = img
    return out[:, :, ::-1].copy()  # BGR -> RGB


def main():
    import yolov5.models.yolo  # noqa: F401  (puts the yolov5 package dir on sys.path: `models.*` resolves)
    from yolov5.models.yolo import Detect

    ckpt = torch.load(DATA / "yolov5n_coco" / "yolov5n.pt", map_location="cpu", weights_only=False)
    model = (ckpt.get("ema") or ckpt["model"]).float().eval()
    for m in model.modules():  # the same compatibility fix as yolov5's attempt_load (v6.1 pickle, v7.0 classes)
        if type(m) is Detect and not isinstance(m.anchor_grid, list):
            delattr(m, "anchor_grid")
            m.anchor_grid = [torch.zeros(1)] * m.nl
    images = [letterbox(DATA / "coco128" / "images" / "train2017" / name) for name in IMAGES]
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        z, raw = model(x)
    top_idx = z[..., 4].argsort(dim=1, descending=True)[:, :TOP]
    np.savez_compressed(
        ROOT / "tests" / "fixtures" / "yolov5n_ref.npz",
        images=np.array(IMAGES),
        size=SIZE,
        input_sum=np.array([im.astype(np.float64).sum() for im in images]),
        top_idx=top_idx.numpy(),
        top_rows=torch.stack([z[i, top_idx[i]] for i in range(len(IMAGES))]).numpy(),
        col_sum=z.double().sum(1).numpy(),
        col_abs=z.double().abs().sum(1).numpy(),
        raw_sum=np.array([[r[i].double().sum().item() for r in raw] for i in range(len(IMAGES))]),
        raw_abs=np.array([[r[i].double().abs().sum().item() for r in raw] for i in range(len(IMAGES))]),
        n_rows=z.shape[1],
        yolov5_version="7.0.14",
        torch_version=torch.__version__,
    )
    print(f"wrote {len(IMAGES)} images, output {tuple(z.shape)}, max objectness {z[..., 4].max():.4f}")


if __name__ == "__main__":
    main()
