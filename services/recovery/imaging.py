"""The ID photo decoded and re-encoded: only a real image is kept, without its EXIF (location) data.

Runs in the parse pool (see workers.py): decoding is CPU work on bytes from anyone. Pure: no I/O.
"""

from __future__ import annotations

import io
import warnings
from functools import cache

from PIL import Image, ImageOps

from .domain import MAX_PHOTO_BYTES, Photo, sniff_image

# A phone's photo has 12 to 50 megapixels; more is a decompression bomb (a few KB of PNG can
# declare gigapixels). Checked from the header, before any pixel is decoded.
MAX_PIXELS = 64_000_000
JPEG_QUALITY = 90


class PhotoRejected(ValueError):
    """The bytes are not a photo this service keeps; `code` is the stable problem code."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(code, detail)  # both in args: the exception crosses the process boundary pickled
        self.code = code
        self.detail = detail

    def __str__(self) -> str:
        return self.detail


@cache
def _register_heif() -> None:
    """HEIC (iPhone) decoding; registered on first use, in the process that decodes."""
    from pillow_heif import register_heif_opener

    register_heif_opener()


def reencode_photo(data: bytes) -> Photo:
    """A JPEG or PNG re-encoded from the decoded pixels of `data` (JPEG, PNG or HEIC).

    Upright (EXIF orientation applied), no metadata carried over. Raises PhotoRejected with code
    `photo_not_an_image` when the bytes do not decode, `photo_too_large` above MAX_PIXELS or when
    the copy would exceed MAX_PHOTO_BYTES.
    """
    kind = sniff_image(data)
    if kind is None:
        raise PhotoRejected("photo_unsupported_type", "The photo must be a JPEG, PNG or HEIC image.")
    if kind == "image/heic":
        _register_heif()
    out = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=("JPEG", "PNG", "HEIF")) as img:
                width, height = img.size
                if width * height > MAX_PIXELS:
                    raise PhotoRejected("photo_too_large", f"The photo has more than {MAX_PIXELS} pixels.")
                img.load()
                upright = ImageOps.exif_transpose(img)
                if kind == "image/png":
                    content_type = "image/png"
                    upright.save(out, format="PNG")
                else:
                    content_type = "image/jpeg"
                    if upright.mode not in ("RGB", "L"):
                        upright = upright.convert("RGB")
                    upright.save(out, format="JPEG", quality=JPEG_QUALITY)
    except PhotoRejected:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise PhotoRejected("photo_too_large", f"The photo has more than {MAX_PIXELS} pixels.") from exc
    except Exception as exc:  # Pillow signals a broken image with OSError, ValueError, SyntaxError and more
        raise PhotoRejected("photo_not_an_image", "The photo cannot be read as an image.") from exc
    copy = out.getvalue()
    if len(copy) > MAX_PHOTO_BYTES:
        raise PhotoRejected("photo_too_large", "The photo is larger than 10 MB.")
    return Photo(copy, content_type)
