"""Extra nn modules used by yolo-prune configs (registered for YAML parsing in register.py)."""
