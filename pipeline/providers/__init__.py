"""Built-in image providers, registered by name."""

from ..registry import providers
from .fal import FalProvider
from .offline import OfflineProvider

providers.register(OfflineProvider)
providers.register(FalProvider)
