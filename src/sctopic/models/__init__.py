"""User-facing model classes."""
from sctopic.models.base import BaseTopicModel
from sctopic.models.sce2tm import SCE2TM

__all__ = ["BaseTopicModel", "SCE2TM"]
