"""What a prompt's words ask of an image's look: colours, light, contrast, detail, saturation.

One vocabulary serves the offline renderer (which paints what the words ask), the offline
judge (which measures whether the image delivers it), the offline decomposer (which turns the
words into yes/no elements) and the offline refiner (whose edits are phrases from this same
vocabulary). That shared vocabulary is what makes the offline loop a real loop: a refined
prompt changes the render in exactly the way the judge checks.
"""

from __future__ import annotations

import colorsys
import functools
import re
from dataclasses import dataclass, field

RGB = tuple[int, int, int]

COLOURS: dict[str, RGB] = {
    "red": (200, 36, 36), "crimson": (180, 20, 50), "scarlet": (230, 40, 20),
    "orange": (240, 130, 20), "amber": (240, 170, 20), "gold": (220, 175, 40),
    "yellow": (240, 220, 40), "lime": (150, 220, 40), "green": (40, 160, 60),
    "emerald": (20, 150, 90), "olive": (110, 120, 40), "teal": (20, 130, 130),
    "turquoise": (40, 200, 190), "cyan": (30, 210, 230), "aqua": (40, 220, 210),
    "blue": (40, 80, 210), "azure": (40, 130, 240), "cobalt": (20, 60, 170),
    "navy": (20, 30, 90), "indigo": (60, 30, 140), "violet": (140, 60, 210),
    "purple": (120, 40, 160), "magenta": (220, 30, 170), "pink": (240, 120, 170),
    "rose": (220, 80, 120), "brown": (120, 70, 35), "tan": (200, 160, 110),
    "beige": (220, 200, 160), "white": (245, 245, 245), "ivory": (250, 245, 225),
    "silver": (190, 195, 200), "grey": (128, 128, 128), "black": (12, 12, 14),
    "charcoal": (45, 45, 50),
}
ALIASES = {"golden": "gold", "gray": "grey", "reddish": "red", "bluish": "blue", "greenish": "green",
           "purplish": "purple", "pinkish": "pink", "yellowish": "yellow", "orangey": "orange"}
ACHROMATIC = {"white", "ivory", "silver", "grey", "black", "charcoal"}

# Words that imply colours without naming them (used by the renderer for its palette only).
IMPLIED_PALETTES: dict[str, tuple[str, ...]] = {
    "sunset": ("orange", "magenta", "purple"), "sunrise": ("amber", "pink", "azure"),
    "dawn": ("pink", "amber", "azure"), "dusk": ("indigo", "violet", "amber"),
    "twilight": ("indigo", "violet", "navy"), "night": ("navy", "indigo", "charcoal"),
    "midnight": ("navy", "black", "indigo"), "neon": ("magenta", "cyan", "violet"),
    "ocean": ("blue", "teal", "azure"), "sea": ("blue", "teal", "azure"), "lake": ("blue", "teal", "green"),
    "forest": ("green", "emerald", "brown"), "jungle": ("green", "emerald", "lime"),
    "snow": ("white", "azure", "silver"), "winter": ("white", "azure", "silver"),
    "desert": ("tan", "amber", "orange"), "autumn": ("orange", "red", "brown"),
    "fire": ("orange", "red", "amber"), "lava": ("red", "orange", "black"),
    "sky": ("azure", "blue", "white"), "grass": ("green", "lime", "olive"), "meadow": ("green", "lime", "yellow"),
    "rain": ("grey", "navy", "teal"), "storm": ("charcoal", "grey", "indigo"), "candle": ("amber", "orange", "brown"),
}

# Exposure bands (mean luminance 0–1) a prompt's light words ask for.
EXPOSURE_BANDS: dict[str, tuple[float, float]] = {
    "dark": (0.06, 0.32), "dim": (0.18, 0.45), "balanced": (0.32, 0.66), "bright": (0.52, 0.82),
}
LIGHT_WORDS: dict[str, str] = {
    "night": "dark", "midnight": "dark", "dark": "dark", "nocturnal": "dark", "moonlit": "dark",
    "shadowy": "dark", "low-key": "dark", "noir": "dark",
    "dusk": "dim", "twilight": "dim", "evening": "dim", "dim": "dim", "candlelit": "dim", "sunset": "dim",
    "dawn": "dim", "gloomy": "dim", "overcast": "dim",
    "bright": "bright", "brightly": "bright", "sunny": "bright", "sunlit": "bright", "noon": "bright",
    "midday": "bright", "daylight": "bright", "high-key": "bright", "luminous": "bright", "radiant": "bright",
}
CONTRAST_WORDS: dict[str, str] = {
    "high contrast": "high", "contrasty": "high", "dramatic": "high", "chiaroscuro": "high", "striking": "high",
    "bold": "high", "low contrast": "low", "soft diffuse light": "low", "foggy": "low", "fog": "low",
    "misty": "low", "mist": "low", "hazy": "low", "haze": "low", "serene": "low", "tranquil": "low",
}
DETAIL_WORDS: dict[str, str] = {
    "sharp": "sharp", "crisp": "sharp", "detailed": "sharp", "intricate": "sharp", "fine detail": "sharp",
    "crisp focus": "sharp", "hyperrealistic": "sharp", "photorealistic": "sharp", "8k": "sharp", "4k": "sharp",
    "soft focus": "soft", "blurry": "soft", "dreamy": "soft", "bokeh": "soft", "hazy": "soft", "ethereal": "soft",
}
SATURATION_WORDS: dict[str, str] = {
    "vivid": "vivid", "vibrant": "vivid", "saturated": "vivid", "colorful": "vivid", "colourful": "vivid",
    "neon": "vivid", "psychedelic": "vivid", "muted": "muted", "pastel": "muted", "desaturated": "muted",
    "faded": "muted", "washed-out": "muted", "muted palette": "muted", "monochrome": "mono",
    "black and white": "mono", "grayscale": "mono", "greyscale": "mono",
}
WARMTH_WORDS: dict[str, str] = {
    "warm": "warm", "cozy": "warm", "golden hour": "warm", "sunset": "warm", "candlelit": "warm",
    "cold": "cool", "icy": "cool", "frozen": "cool", "wintry": "cool", "cool": "cool",
}
MOOD_SHIFTS: dict[str, tuple[float, float]] = {  # word -> (exposure shift, saturation factor)
    "melancholic": (-0.08, 0.75), "melancholy": (-0.08, 0.75), "sad": (-0.06, 0.7), "somber": (-0.08, 0.7),
    "gloomy": (-0.1, 0.7), "eerie": (-0.1, 0.8), "ominous": (-0.12, 0.8), "mysterious": (-0.08, 0.85),
    "cheerful": (0.08, 1.25), "joyful": (0.08, 1.25), "happy": (0.06, 1.2), "playful": (0.05, 1.25),
    "whimsical": (0.04, 1.2), "serene": (0.02, 0.9), "peaceful": (0.02, 0.9), "calm": (0.0, 0.9),
    "energetic": (0.04, 1.3), "nostalgic": (-0.02, 0.8),
}
# Phrases the refiner adds; the renderer reads them as nudges rather than as a new band.
NUDGES: dict[str, tuple[str, float]] = {
    "well-lit subject": ("exposure", 0.09), "subdued lighting": ("exposure", -0.09),
}
COMPOSITION_WORDS: dict[str, str] = {
    "close-up": "close", "closeup": "close", "portrait": "close", "macro": "close",
    "landscape": "wide", "wide": "wide", "panoramic": "wide", "vista": "wide", "wide-angle": "wide",
    "aerial": "aerial", "overhead": "aerial", "top-down": "aerial", "bird's-eye": "aerial",
    "city": "urban", "street": "urban", "skyline": "urban", "alley": "urban", "buildings": "urban",
    "urban": "urban", "mountain": "mountains", "mountains": "mountains", "hills": "mountains",
    "ocean": "water", "sea": "water", "lake": "water", "river": "water", "water": "water",
    "minimal": "minimal", "minimalist": "minimal", "crowd": "busy", "busy": "busy", "cluttered": "busy",
    "sun": "sun", "moon": "moon", "sunset": "sun", "sunrise": "sun", "moonlit": "moon", "night": "moon",
}
NEGATORS = {"no", "not", "without", "never", "non"}
STOPWORDS = set(
    "a an the and or of in on at to with by for from into over under above below near its it is are be this that "
    "these those as some many one two three four five very scene mood style image picture photo".split()
    # words of the refiner's phrases, which change the look and must not move the layout
    + "colours colors tones tone dominant focus detail lit subject lighting palette light diffuse gentle".split()
)
_WORD = re.compile(r"[a-z0-9]+(?:[-'][a-z0-9]+)*")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _phrase_hits(tokens: list[str], table: dict[str, str]) -> list[tuple[int, str, str]]:
    """(position, phrase, value) for every phrase of ``table`` found in ``tokens``, longest first."""
    hits: list[tuple[int, str, str]] = []
    taken: set[int] = set()
    for phrase in sorted(table, key=lambda p: -len(p.split())):
        parts = phrase.split()
        n = len(parts)
        for i in range(len(tokens) - n + 1):
            if tokens[i:i + n] == parts and not taken.intersection(range(i, i + n)):
                hits.append((i, phrase, table[phrase]))
                taken.update(range(i, i + n))
    return sorted(hits)


def _negated(tokens: list[str], i: int) -> bool:
    return any(t in NEGATORS for t in tokens[max(0, i - 2):i])


def _last_value(hits: list[tuple[int, str, str]]) -> str | None:
    return hits[-1][2] if hits else None


@dataclass(frozen=True)
class VisualIntent:
    """What the words of a prompt ask of the image's look. ``None`` means "not specified"."""

    colours: tuple[str, ...] = ()            # named explicitly, in order, negated ones removed
    avoided_colours: tuple[str, ...] = ()    # "no red", "without blue"
    dominant: tuple[str, ...] = ()           # colours asked to dominate ("dominant teal tones")
    implied_colours: tuple[str, ...] = ()    # from words like "sunset", "forest"
    light: str | None = None                 # key of EXPOSURE_BANDS
    contrast: str | None = None              # "high" | "low"
    detail: str | None = None                # "sharp" | "soft"
    saturation: str | None = None            # "vivid" | "muted" | "mono"
    warmth: str | None = None                # "warm" | "cool"
    exposure_shift: float = 0.0
    saturation_factor: float = 1.0
    composition: frozenset[str] = field(default_factory=frozenset)
    subject_words: tuple[str, ...] = ()      # everything else: drives the composition's layout

    @property
    def exposure_band(self) -> tuple[float, float]:
        return EXPOSURE_BANDS[self.light or "balanced"]


@functools.lru_cache(maxsize=4096)
def read(text: str) -> VisualIntent:
    """The visual intent of ``text`` (cached: the judge, refiner and renderer all read the same prompts)."""
    tokens = words(text)
    colours: list[str] = []
    avoided: list[str] = []
    dominant: list[str] = []
    used: set[int] = set()
    for i, tok in enumerate(tokens):
        name = ALIASES.get(tok, tok)
        if name in COLOURS:
            used.add(i)
            if _negated(tokens, i):
                avoided.append(name)
            else:
                if name not in colours:
                    colours.append(name)
                if i > 0 and tokens[i - 1] == "dominant" and name not in dominant:
                    dominant.append(name)
    implied: list[str] = []
    for tok in tokens:
        for c in IMPLIED_PALETTES.get(tok, ()):
            if c not in implied and c not in avoided:
                implied.append(c)

    def lookup(table: dict[str, str]) -> list[tuple[int, str, str]]:
        hits = [h for h in _phrase_hits(tokens, table) if not _negated(tokens, h[0])]
        for pos, phrase, _ in hits:
            used.update(range(pos, pos + len(phrase.split())))
        return hits

    light_hits = lookup(LIGHT_WORDS)
    contrast = _last_value(lookup(CONTRAST_WORDS))
    detail = _last_value(lookup(DETAIL_WORDS))
    saturation = _last_value(lookup(SATURATION_WORDS))
    warmth = _last_value(lookup(WARMTH_WORDS))
    composition = frozenset(v for _, _, v in lookup(COMPOSITION_WORDS))
    shift, factor = 0.0, 1.0
    for i, tok in enumerate(tokens):
        if tok in MOOD_SHIFTS:
            used.add(i)
            s, f = MOOD_SHIFTS[tok]
            shift, factor = shift + s, factor * f
    for phrase, (what, amount) in NUDGES.items():
        count = " ".join(tokens).count(phrase)
        if count and what == "exposure":
            shift += amount * count
    # Light: the strongest request wins (dark beats dim beats bright when mixed).
    light_values = [v for _, _, v in light_hits]
    light = next((b for b in ("dark", "dim", "bright") if b in light_values), None)
    subject = tuple(
        t for i, t in enumerate(tokens)
        if i not in used and t not in STOPWORDS and t not in NEGATORS and not t.isdigit() and len(t) > 2
    )
    return VisualIntent(
        colours=tuple(colours), avoided_colours=tuple(avoided), dominant=tuple(dominant),
        implied_colours=tuple(implied), light=light,
        contrast=contrast, detail=detail, saturation=saturation, warmth=warmth,
        exposure_shift=max(-0.3, min(0.3, shift)), saturation_factor=max(0.3, min(1.6, factor)),
        composition=composition, subject_words=subject,
    )


def hue_of(name: str) -> float:
    """Hue of a named colour in degrees (0–360)."""
    r, g, b = COLOURS[name]
    h, _, _ = colorsys.rgb_to_hsv(r / 255, g / 255, b / 255)
    return h * 360.0
