"""Goal encodings (registry group ``goal_encoding``): what a lower actor receives as its goal input.

A goal encoding maps the higher level's subgoal code g (..., latents, classes) and its decoding f_psi(g) into the
lower level's h-space (..., D) to the tensor appended to the lower actor's and critics' inputs.
"""
