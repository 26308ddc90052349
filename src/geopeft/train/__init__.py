"""Training: one loop for every strategy (loop.py), its resumable state (resume.py), DDP
(distributed.py), losses, validation metrics and the jobs (run.py)."""
