"""Pictures from image providers, normalised to the PNG bytes the bucket stores."""

from __future__ import annotations

import io

from PIL import Image, UnidentifiedImageError


def as_png(data: bytes) -> tuple[bytes, int, int]:
    """(PNG bytes, width, height); other formats are converted, PNG passes unchanged.

    Raises:
        ValueError: the bytes are not a picture Pillow can read (truncated, corrupt, not an
            image at all).
    """
    try:
        with Image.open(io.BytesIO(data)) as probe:
            probe.verify()  # checks the structure; the image must be reopened afterwards
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # truncated pixel data only shows when decoding
            width, height = image.size
            if image.format == "PNG":
                return data, width, height
            if image.mode not in ("RGB", "RGBA", "L", "LA"):
                # Palette and CMYK pictures: keep transparency if there is any.
                alpha = "A" in image.getbands() or "transparency" in image.info
                image = image.convert("RGBA" if alpha else "RGB")
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            return buffer.getvalue(), width, height
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"not a readable image ({type(err).__name__})") from None
