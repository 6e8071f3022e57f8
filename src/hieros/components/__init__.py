"""The one place that names the built-in components.

:meth:`hieros.registry.Registry.default` imports exactly these modules; nothing is
registered as a side effect of ``import hieros``.
"""

BUILTIN_MODULES: tuple[str, ...] = (
    "hieros.sequence_models.s5",
    "hieros.sequence_models.rssm",
    "hieros.sequence_models.gru",
    "hieros.samplers.uniform",
    "hieros.samplers.etbs",
    "hieros.samplers.etbs_original",
    "hieros.samplers.tbs",
    "hieros.goal_encodings.encoded",
    "hieros.goal_encodings.decoded",
    "hieros.envs.atari100k",
    "hieros.envs.gym",
    "hieros.envs.minatar",
    "hieros.envs.chain",
)
