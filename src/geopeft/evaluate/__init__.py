"""Evaluation: metrics and the evaluate entry point."""
