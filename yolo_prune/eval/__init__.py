"""Evaluation: COCO mAP with pycocotools for any YOLO-format dataset (`yolo-prune val`)."""
