"""Metrics of predictions against labels (numpy only): classification, multi-label, segmentation."""
