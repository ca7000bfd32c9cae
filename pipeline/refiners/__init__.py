"""Built-in refiners, registered by name."""

from ..registry import refiners
from .offline import OfflineRefiner

refiners.register(OfflineRefiner)
