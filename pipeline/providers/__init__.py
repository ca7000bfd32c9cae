"""Built-in image providers, registered by name."""

from ..registry import providers
from .offline import OfflineProvider

providers.register(OfflineProvider)
