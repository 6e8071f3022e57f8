"""Sequence models of the world model (registry group ``sequence_model``): s5 (S5WM), rssm, gru.

All three subclass :class:`hieros.sequence_models.base.LatentDynamics` and expose the same interface.
"""
