"""Evaluation on MRNet: metrics with bootstrap intervals, reports and the model card."""
