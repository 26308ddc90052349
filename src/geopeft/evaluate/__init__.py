"""Evaluation: test-split metrics of a saved model (run.py) and inference on files (predict.py)."""
