"""Model lists shared by the engine tests (the targets named in the issues)."""

ULTRALYTICS_MODELS = ["yolov5nu.yaml", "yolov8n.yaml", "yolov8s.yaml", "yolo11n.yaml", "yolo26n.yaml"]
YOLOV7_MODELS = ["yolov7-tiny.yaml", "yolov7.yaml", "yolov7-tiny-idetect.yaml"]  # the last: anchor-based IDetect
ALL_MODELS = ULTRALYTICS_MODELS + YOLOV7_MODELS
