"""The training loop (Lightning Fabric), its clock, evaluation and run bookkeeping."""
