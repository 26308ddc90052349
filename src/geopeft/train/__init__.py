"""Training: one loop for every strategy, MLflow tracking, run entry points."""
