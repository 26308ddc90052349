"""Training: one loop for every strategy (loop.py), the data it feeds to the device and its
augmentation (feed.py), its resumable state (resume.py), DDP (distributed.py), losses, validation
metrics and the jobs (run.py)."""
