"""yolo-prune: filter pruning for Ultralytics YOLO detectors."""
