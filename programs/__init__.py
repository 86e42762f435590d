"""Ready task programs (shipped as fusion_dspy.programs)."""
