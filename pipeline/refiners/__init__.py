"""Built-in refiners, registered by name."""

from ..gemini import GeminiRefiner
from ..registry import refiners
from .offline import OfflineRefiner

refiners.register(OfflineRefiner)
refiners.register(GeminiRefiner)
