"""Built-in judges, registered by name."""

from ..registry import judges
from .offline import OfflineJudge

judges.register(OfflineJudge)
