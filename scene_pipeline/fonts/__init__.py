"""Bundled Hangul-capable font for the offline placeholder images.

Pillow's built-in default font has no Hangul glyphs, so Korean text drawn with
it comes out as dots. This package ships a subset of NanumGothic (renamed
"Placeholder Hangul", SIL Open Font License 1.1; see README.md and OFL.txt
beside this file) so placeholders render Korean without any system font.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from PIL import ImageFont

FONT_PATH = Path(__file__).with_name("PlaceholderHangul-Regular.ttf")


@lru_cache(maxsize=32)
def hangul_font(size: int) -> ImageFont.FreeTypeFont:
    """Return the bundled Hangul font at ``size`` pixels, loaded once per size.

    Raises:
        FileNotFoundError: if the font file is missing from the installed
            package (for example, package data was not shipped).
    """
    if not FONT_PATH.is_file():
        raise FileNotFoundError(
            f"bundled Hangul font not found at {FONT_PATH}; "
            "check that scene_pipeline was installed with its package data "
            "(fonts/*.ttf)"
        )
    return ImageFont.truetype(str(FONT_PATH), size)
