"""Tuning of fusion programs (shipped as fusion_dspy.optimizers)."""
