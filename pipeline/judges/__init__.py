"""Built-in judges, registered by name."""

from ..gemini import GeminiJudge
from ..registry import judges
from .offline import OfflineJudge

judges.register(OfflineJudge)
judges.register(GeminiJudge)
