"""Model sources: our YOLOv7 configs, Ultralytics YAMLs and checkpoints, foreign YOLOv5/v7 checkpoints."""
