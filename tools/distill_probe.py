"""How far output distillation from the dense model lifts a pruned checkpoint (issue 9, docs/results.md session 8).

The student is any pruned checkpoint (e.g. `yolo-prune prune --method damage`), the teacher the dense model it was cut
from; both keep their BatchNorm statistics frozen, so the teacher is exactly the pretrained model. No labels: the
student's raw head outputs are pulled towards the teacher's (objectness BCE against the teacher's sigmoid, class BCE
and box-offset MSE weighted by the teacher's objectness), which works across any widths, on batches of the chosen
split with Ultralytics' training augmentation. Every `--every` steps the student is scored on the validation split.

`--split val` distils on the very images it is scored on: a diagnostic bound on what the pruned architecture can
reach quickly when the data is not the limit, never a result (the default, `train`, is the honest one).

    python tools/coco128_split.py /tmp/c128split
    yolo-prune prune --model ../shared/data/yolov5n_coco/yolov5n.pt --flops 0.2 --method damage \
        --data /tmp/c128split/coco128-split.yaml --out damage20.pt
    python tools/distill_probe.py damage20.pt --data /tmp/c128split/coco128-split.yaml --steps 300
"""

import argparse
import contextlib
import copy
import io
import math
import os

os.environ.setdefault("YOLO_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from ultralytics.cfg import get_cfg  # noqa: E402
from ultralytics.data import build_yolo_dataset  # noqa: E402
from ultralytics.data.utils import check_det_dataset  # noqa: E402
from ultralytics.models.yolo.detect import DetectionValidator  # noqa: E402
from ultralytics.utils import DEFAULT_CFG  # noqa: E402

from yolo_prune.nn.build import load_model  # noqa: E402
from yolo_prune.safe_load import load_checkpoint  # noqa: E402
from yolo_prune.train.distill import frozen_like_student  # noqa: E402

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


def score(model, data: str, imgsz: int) -> tuple[float, float]:
    """mAP50-95 / mAP50 on the validation split by Ultralytics' validator (batch 16, fp32, square batches: on a
    pruned model up to 0.03 off `YOLO(path).val`, which batches rectangles; compare its figures with each other)."""
    args = dict(data=data, imgsz=imgsz, batch=16, workers=0, plots=False, verbose=False, half=False, device="cpu")
    with contextlib.redirect_stdout(io.StringIO()):
        stats = DetectionValidator(args=args)(model=copy.deepcopy(model).float().eval())
    return round(stats["metrics/mAP50-95(B)"], 4), round(stats["metrics/mAP50(B)"], 4)


def output_distillation(student_maps, teacher_maps) -> torch.Tensor:
    """Mean over levels: objectness BCE, class BCE and box-offset MSE weighted by objectness; raw (bs, na, h, w, no)."""
    total = 0.0
    for s, t in zip(student_maps, teacher_maps):
        s, t = s.float(), t.float()
        obj = t[..., 4].sigmoid()
        weight = obj.unsqueeze(-1)
        norm = weight.sum().clamp_min(1)
        cls = F.binary_cross_entropy_with_logits(s[..., 5:], t[..., 5:].sigmoid(), reduction="none")
        box = (s[..., :4].sigmoid() - t[..., :4].sigmoid()).pow(2).sum(-1, keepdim=True)
        total = total + F.binary_cross_entropy_with_logits(s[..., 4], obj) + (cls * weight).sum() / norm / s.shape[-1]
        total = total + (box * weight).sum() / norm
    return total / len(student_maps)


def loader(data: str, split: str, imgsz: int, mosaic: float, seed: int) -> DataLoader:
    info = check_det_dataset(data)
    cfg = get_cfg(DEFAULT_CFG, dict(imgsz=imgsz, mosaic=mosaic, close_mosaic=0))
    dataset = build_yolo_dataset(cfg, info[split], 16, info, mode="train", stride=32)
    return DataLoader(dataset, batch_size=16, shuffle=True, num_workers=0, collate_fn=dataset.collate_fn,
                      drop_last=True, generator=torch.Generator().manual_seed(seed))  # fmt: skip


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("student", help="pruned checkpoint (.pt)")
    p.add_argument("--teacher", default=os.path.join(SHARED, "yolov5n_coco", "yolov5n.pt"), help="dense model")
    p.add_argument("--data", required=True, help="dataset YAML with train and val splits")
    p.add_argument("--split", default="train", choices=["train", "val"], help="images distilled on (val: diagnostic)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--every", type=int, default=50)
    p.add_argument("--lr", type=float, default=1e-4, help="AdamW, cosine decay to 0")
    p.add_argument("--imgsz", type=int, default=320)
    p.add_argument("--mosaic", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    torch.manual_seed(a.seed)
    # train mode (raw head outputs), every BatchNorm normalising by its running statistics
    teacher = frozen_like_student(load_model(a.teacher).float(), batch_statistics=False)
    student = frozen_like_student(load_checkpoint(a.student)[0].float(), batch_statistics=False).requires_grad_(True)
    print(f"step 0: mAP50-95 / mAP50 {score(student, a.data, a.imgsz)}", flush=True)
    optimizer = torch.optim.AdamW(student.parameters(), lr=a.lr, weight_decay=0.0)
    batches, step = loader(a.data, a.split, a.imgsz, a.mosaic, a.seed), 0
    while step < a.steps:
        for batch in batches:
            for group in optimizer.param_groups:
                group["lr"] = a.lr * 0.5 * (1 + math.cos(math.pi * step / a.steps))
            images = batch["img"].float() / 255
            with torch.no_grad():
                target = teacher(images)
            loss = output_distillation(student(images), target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            if step % a.every == 0 or step == a.steps:
                print(f"step {step}: loss {loss.item():.4f}, mAP50-95 / mAP50 {score(student, a.data, a.imgsz)}",
                      flush=True)  # fmt: skip
            if step >= a.steps:
                break


if __name__ == "__main__":
    main()
