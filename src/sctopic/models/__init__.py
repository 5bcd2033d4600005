"""User-facing model classes."""
from sctopic.models.base import BaseTopicModel
from sctopic.models.sce2tm import SCE2TM
from sctopic.models.scetm import SCETM
from sctopic.models.transfer import load_model, transfer

__all__ = ["BaseTopicModel", "SCE2TM", "SCETM", "load_model", "transfer"]
