"""What the training stages share: the per-worker loop (loop.py), its Ray and MLflow edges
(common.py) and the driver side that fits, logs and registers (driver.py)."""
