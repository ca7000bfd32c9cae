"""The offline stack: provider, judge and refiner with no network, key or cost."""

from pipeline.services.offline.judge import OfflineJudge
from pipeline.services.offline.provider import OfflineProvider
from pipeline.services.offline.refiner import OfflineRefiner

__all__ = ["OfflineJudge", "OfflineProvider", "OfflineRefiner"]
