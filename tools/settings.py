"""Settings of the image tools (the ``images:`` section of the config).

They are defined at the configuration layer, :mod:`mcu_sim.config_images`, so that the
config imports no tools; this module is where the tools (and their users) name them.
"""

from mcu_sim.config_images import (
    MODULES,
    AestheticSettings,
    BatchingSettings,
    ClipSettings,
    FaceSettings,
    ImagesConfig,
    Module,
    NsfwSettings,
    PhotoMakerSettings,
    QASettings,
    RetrievalSettings,
    ScorerSettings,
    WebSearchSettings,
)

__all__ = [
    "MODULES",
    "AestheticSettings",
    "BatchingSettings",
    "ClipSettings",
    "FaceSettings",
    "ImagesConfig",
    "Module",
    "NsfwSettings",
    "PhotoMakerSettings",
    "QASettings",
    "RetrievalSettings",
    "ScorerSettings",
    "WebSearchSettings",
]
