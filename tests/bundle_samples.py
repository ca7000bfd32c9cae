"""Sample prompt-set bundles with images drawn by Pillow: a 5-character, 12-page story and an avatar set.

``python -m tests.bundle_samples`` writes them to ``data/samples/`` (story_bundle.zip,
avatar_bundle.zip), where the New run page offers them; the tests build them afresh.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent

CHARACTERS = [
    ("mira", "Mira", ["ten years old", "curly red hair", "yellow raincoat"], (220, 90, 40)),
    ("tobi", "Tobi", ["small grey fox", "white-tipped tail", "green scarf"], (120, 120, 130)),
    ("oma", "Oma Lene", ["grandmother", "silver bun", "round glasses", "blue cardigan"], (70, 100, 180)),
    ("kit", "Kit", ["lighthouse keeper", "tall", "black beard", "orange knit cap"], (30, 30, 30)),
    ("pip", "Pip", ["tiny robot", "copper body", "one round green eye"], (180, 120, 60)),
]
PAGES = [
    ("Mira finds a fox cub shivering under the garden hedge", "the back garden at dusk, rain", ["mira", "tobi"]),
    ("Mira carries Tobi inside wrapped in her raincoat", "a warm farmhouse kitchen", ["mira", "tobi", "oma"]),
    ("Oma Lene dries Tobi by the stove and laughs", "the kitchen stove, steam rising", ["oma", "tobi"]),
    ("Mira and Tobi look at an old map of the coast", "Mira's attic bedroom, lamp light", ["mira", "tobi"]),
    ("The two friends set off along the cliff path", "a windy cliff path above the sea", ["mira", "tobi"]),
    ("They meet Kit at the foot of the lighthouse", "a red and white lighthouse", ["mira", "tobi", "kit"]),
    ("Kit shows them the great lamp at the top", "the lantern room, brass and glass", ["kit", "mira", "tobi"]),
    ("A tiny robot climbs out of Kit's toolbox", "a cluttered workbench", ["pip", "kit"]),
    ("Pip the robot beeps hello to Tobi", "the lighthouse stairs", ["pip", "tobi"]),
    ("A storm rolls in and the lamp goes dark", "the lighthouse in a storm at night", ["kit", "pip", "mira"]),
    ("Pip lights its green eye to guide the ships home", "the lantern room in the storm", ["pip", "mira", "tobi", "kit"]),
    ("Everyone shares cocoa with Oma Lene the next morning", "the farmhouse kitchen, sunny morning", ["mira", "tobi", "oma", "kit", "pip"]),
]
STYLE = "soft watercolour picture-book illustration, muted palette, gentle ink outlines"

PERSONAS = [
    ("ana", "woman", "barista", "31, loves climbing and old jazz records", (200, 150, 120)),
    ("ben", "man", "teacher", "45, cycles to school, grows tomatoes", (150, 110, 90)),
    ("chen", "woman", "engineer", "27, builds drones at weekends", (230, 190, 160)),
    ("dev", "man", "chef", "38, runs a night market stall", (120, 80, 60)),
]


def portrait(colour: tuple[int, int, int], label: str, side: int = 256, seed: int = 0) -> bytes:
    """A small PNG: a head-and-shoulders figure in ``colour`` on a light ground, with a mark."""
    img = Image.new("RGB", (side, side), (235 - seed % 20, 230, 220))
    d = ImageDraw.Draw(img)
    d.ellipse((side * 0.3, side * 0.15, side * 0.7, side * 0.55), fill=colour)
    d.rectangle((side * 0.2, side * 0.6, side * 0.8, side), fill=tuple(max(0, c - 40) for c in colour))
    d.text((8, 8), label, fill=(20, 20, 20))
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def style_swatch(side: int = 128) -> bytes:
    img = Image.new("RGB", (side, side), (190, 200, 185))
    d = ImageDraw.Draw(img)
    for i in range(0, side, 16):
        d.line((0, i, side, i + 20), fill=(150, 170, 190), width=6)
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def story_document() -> dict[str, Any]:
    return {
        "name": "The lighthouse fox (12 pages)",
        "style": STYLE,
        "template": "Page {page}. {prompt}. Scene: {scene}. Characters: {characters}. Style: {style}.",
        "characters": [{"id": cid, "name": name, "traits": traits, "reference_images": [f"characters/{cid}.png"]}
                       for cid, name, traits, _ in CHARACTERS],
        "prompts": [{"id": f"page_{n:02d}", "page": n, "prompt": text, "scene": scene, "characters": cast,
                     "reference_images": [{"path": "style/watercolour.png", "role": "style"}]}
                    for n, (text, scene, cast) in enumerate(PAGES, 1)],
    }


def avatar_document() -> dict[str, Any]:
    return {
        "name": "Avatars (4 personas)",
        "style": "clean studio portrait, soft key light, plain background",
        "template": "Avatar of a {gender} {job}, {bio}. {prompt}. Style: {style}.",
        "prompts": [{"id": f"avatar_{pid}", "gender": gender, "job": job, "bio": bio,
                     "prompt": "Same person as the reference, head and shoulders, friendly expression",
                     "reference_images": {"path": f"base/{pid}.png", "role": "subject"},
                     "grid": True, "images": 8}  # two 2x2 grids of edits, split: 8 images per persona
                    for pid, gender, job, bio, _ in PERSONAS],
    }


def story_files() -> dict[str, bytes]:
    files = {"prompts.json": json.dumps(story_document(), indent=1).encode("utf-8"), "style/watercolour.png": style_swatch()}
    for i, (cid, name, _, colour) in enumerate(CHARACTERS):
        files[f"characters/{cid}.png"] = portrait(colour, name, seed=i)
    return files


def avatar_files() -> dict[str, bytes]:
    files = {"prompts.json": json.dumps(avatar_document(), indent=1).encode("utf-8")}
    for i, (pid, _, _, _, colour) in enumerate(PERSONAS):
        files[f"base/{pid}.png"] = portrait(colour, pid, seed=i)
    return files


def write_zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(name, data)
    return path


def write_folder(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


if __name__ == "__main__":
    for name, files in (("story_bundle.zip", story_files()), ("avatar_bundle.zip", avatar_files())):
        target = write_zip(ROOT / "data" / "samples" / name, files)
        print(f"{target}: {target.stat().st_size:,} bytes")
