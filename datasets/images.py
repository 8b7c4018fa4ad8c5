"""Reading an image file as RGB pixels, in the orientation its EXIF tag asks for or as stored (docs/evaluation.md,
"Photo orientation").

Phones store most photos sideways and record how to turn them in the EXIF orientation tag (0x0112, values 1-8),
which every viewer applies. `exif="apply"` gives the image as a viewer shows it (what prediction wants, and what
annotation tools show), `exif="ignore"` the stored pixels (what the REFER / ReferIt / Flickr boxes refer to, as in
the original). HEIC / HEIF files read through the optional pillow-heif package; their rotation is part of the
format (libheif always applies it), so they read upright whatever `exif` says.
"""
import functools
import math
import re
import warnings
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

EXIF_MODES = ("apply", "ignore")
ORIENTATION_TAG = 0x0112
# Tags whose turn swaps width and height.
TRANSPOSING = (5, 6, 7, 8)
# The ISO base media "ftyp" brands of HEIF still images (AVIF's are read by Pillow itself).
HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1", b"msf1"}
# Where Pillow refuses an image outright (twice its warning limit: about 179 megapixels), the default of
# --max_image_pixels.
MAX_PIXELS = 2 * Image.MAX_IMAGE_PIXELS
# What a file's first bytes say it is, for telling why it cannot be read.
SIGNATURES = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
              (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"%PDF", "PDF document"),
              (b"PK\x03\x04", "ZIP archive"), (b"\x1f\x8b", "gzip archive"))
IMAGE_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WebP", "HEIF", "AVIF")


class ImageError(ValueError):
    """An image that cannot be used; the message says why: too large, truncated, corrupt, not an image, or a package
    missing to read it."""


def orient(rgb, orientation):
    """uint8 [H, W, 3] as stored -> as shown by a viewer for EXIF orientation 1-8 (PIL's ImageOps.exif_transpose)."""
    turned = {
        2: lambda a: a[:, ::-1],             # mirrored left-right
        3: lambda a: a[::-1, ::-1],          # upside down
        4: lambda a: a[::-1],                # mirrored top-bottom
        5: lambda a: a.swapaxes(0, 1),       # mirrored along the main diagonal
        6: lambda a: np.rot90(a, -1),        # turned 90 degrees clockwise to show
        7: lambda a: np.rot90(a, 2).swapaxes(0, 1),  # mirrored along the other diagonal
        8: lambda a: np.rot90(a, 1),         # turned 90 degrees anticlockwise to show
    }.get(orientation)
    return rgb if turned is None else np.ascontiguousarray(turned(rgb))


def pil_orientation(image):
    """The orientation a PIL image's EXIF asks for (1 when it has none or an invalid value); for HEIC the one
    libheif already applied."""
    if "original_orientation" in image.info:  # pillow-heif: already turned, the tag reset to 1
        return int(image.info["original_orientation"] or 1)
    try:
        value = image.getexif().get(ORIENTATION_TAG, 1)
    except Exception:  # noqa: BLE001 (a corrupt EXIF block is no orientation, not an unreadable image)
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def is_heif(path):
    with open(path, "rb") as f:
        head = f.read(12)
    return head[4:8] == b"ftyp" and head[8:12] in HEIF_BRANDS


def sniff(path):
    """The format a file's first bytes announce (None when they announce none this code knows)."""
    with open(path, "rb") as f:
        head = f.read(64)
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    if head[4:8] == b"ftyp":
        return "AVIF" if head[8:12] in (b"avif", b"avis") else "HEIF" if head[8:12] in HEIF_BRANDS else "MP4 video"
    if head.lstrip()[:5].lower() in (b"<?xml", b"<svg ", b"<svg>", b"<!doc", b"<html"):
        return "SVG or HTML document"
    return next((name for magic, name in SIGNATURES if head.startswith(magic)), None)


def why_unreadable(path, err):
    """The cause of a failed decode, in words: an empty file, not an image (what it is instead), HEIC without
    pillow-heif, a truncated or a corrupt file of its format."""
    if Path(path).stat().st_size == 0:
        return "an empty file"
    kind = sniff(path)
    if kind is None:
        return "not an image: its first bytes are no image format this code reads (save it as PNG or JPEG)"
    if kind not in IMAGE_FORMATS:
        return f"a {kind}, not an image (save the picture as PNG or JPEG)"
    if "pillow-heif" in str(err):
        return str(err)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with open_image(path) as pil:
                pil.load()
    except (OSError, SyntaxError, ValueError) as failure:
        detail = str(failure).splitlines()[0] if str(failure) else type(failure).__name__
        if "truncated" in detail:
            return f"a truncated {kind}: the file ends before its pixels do (an interrupted download or copy?)"
        return f"a corrupt {kind} ({detail})"
    return f"a {kind} this decoder cannot read ({str(err).splitlines()[0] if str(err) else type(err).__name__})"


def header_size(path):
    """(width, height) from the file's header, nothing decoded; None for a file PIL does not identify; for an image
    Pillow refuses outright (beyond MAX_PIXELS), its pixel count alone."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with open_image(path) as pil:
                return pil.size
    except Image.DecompressionBombError as err:
        return int(re.search(r"\((\d+) pixels\)", str(err)).group(1))
    except (UnidentifiedImageError, OSError, ValueError):
        return None


def check_pixels(where, size, limit):
    """ImageError when an image of size (width, height), or of a pixel count, exceeds limit pixels (None: no
    limit; Pillow's own refusal beyond MAX_PIXELS always counts)."""
    pixels = size if isinstance(size, int) else size[0] * size[1]
    if isinstance(size, int) or (limit is not None and pixels > limit):
        shape = "" if isinstance(size, int) else f"{size[0]} x {size[1]} pixels, "
        limit = min(limit or MAX_PIXELS, MAX_PIXELS) if isinstance(size, int) else limit
        raise ImageError(f"{where} is too large: {shape}{pixels / 1e6:.3g} megapixels, above the limit of "
                         f"{limit / 1e6:.3g} megapixels (--max_image_pixels); downscale it, or raise the limit")


@functools.cache
def heif_available():
    """Registers pillow-heif's opener with PIL once; False when the package is not installed."""
    try:
        import pillow_heif
    except ImportError:
        return False
    pillow_heif.register_heif_opener()
    return True


def open_image(path):
    """Image.open, with pillow-heif's opener registered the first time a HEIC / HEIF file needs it (only files PIL
    does not identify are sniffed), and an error naming the package where it is missing."""
    try:
        return Image.open(path)
    except UnidentifiedImageError:
        if not is_heif(path):
            raise
        if not heif_available():
            raise ValueError("HEIC / HEIF images need the pillow-heif package: pip install pillow-heif (it is in "
                             "requirements-app.txt), or convert the file to JPEG") from None
        return Image.open(path)


def pil_pixels(image):
    """A PIL image -> (uint8 [H, W, 3] RGB as decoded, its EXIF orientation, whether the decoder already turned it)."""
    # np.array: a writable copy (torch warns about read-only arrays)
    return np.array(image.convert("RGB")), pil_orientation(image), "original_orientation" in image.info


def header_orientation(path):
    """The EXIF orientation of a file OpenCV decoded; 1 for the formats PIL does not read (they carry no EXIF for it)."""
    try:
        with Image.open(path) as pil:
            return pil_orientation(pil)
    except UnidentifiedImageError:
        return 1


def decode(path, with_orientation=True):
    """-> (uint8 [H, W, 3] RGB as stored, whatever the file holds: gray, CMYK, RGBA, palette, 16-bit (top 8 bits);
    its EXIF orientation (1 when none, or not read); whether the decoder already turned it (HEIC)).

    OpenCV decodes JPEGs to the same pixels as PIL, faster; PIL reads what OpenCV cannot, or says why. Raises
    FileNotFoundError for a missing file and ValueError, naming the file, for one that cannot be decoded."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image {path} not found")
    try:
        rgb = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        if rgb is None:
            with open_image(path) as pil:
                return pil_pixels(pil)
        return cv2.cvtColor(rgb, cv2.COLOR_BGR2RGB), header_orientation(path) if with_orientation else 1, False
    except ImageError:
        raise
    except Exception as err:
        raise ImageError(f"cannot read image {path}: {why_unreadable(path, err)}") from None


def read_photo(path, exif="apply", max_pixels=MAX_PIXELS, canvas=None):
    """A photo for prediction: -> (uint8 [H, W, 3] RGB, orientation note, (width, height) of the full image as
    oriented). Its pixel count is checked from the header before anything is decoded (ImageError above max_pixels);
    a JPEG far larger than the model's canvas side (canvas) is decoded at a reduced scale (libjpeg's 1/2, 1/4 or 1/8,
    keeping its long side at least twice the canvas): the pixels then stand for the full size that the third value
    gives."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image {path} not found")
    size = header_size(path)
    if size is not None:
        check_pixels(path, size, max_pixels)
    if canvas is None or size is None or max(size) < 4 * canvas or sniff(path) != "JPEG":
        rgb, note = read_image(path, exif)
        return rgb, note, (rgb.shape[1], rgb.shape[0])
    scale = 2 * canvas / max(size)
    try:
        with open_image(path) as pil:
            pil.draft("RGB", (math.ceil(size[0] * scale), math.ceil(size[1] * scale)))
            rgb, note = oriented(*pil_pixels(pil), exif)
    except Exception as err:
        raise ImageError(f"cannot read image {path}: {why_unreadable(path, err)}") from None
    swap = note.get("exif") == "apply" and note.get("exif_orientation") in TRANSPOSING
    return rgb, note, (size[1], size[0]) if swap else size


def oriented(rgb, orientation, turned, exif):
    """Pixels as decoded -> (pixels as `exif` asks, what a prediction record says of the orientation: nothing for 1,
    else the tag and whether the pixels were turned ("apply") or kept as stored ("ignore"))."""
    if exif not in EXIF_MODES:
        raise ValueError(f"unknown EXIF mode {exif!r}; choose from {', '.join(EXIF_MODES)}")
    applied = exif == "apply" or turned
    if applied and not turned:
        rgb = orient(rgb, orientation)
    return rgb, {} if orientation == 1 else {"exif_orientation": orientation, "exif": "apply" if applied else "ignore"}


def read_image(path, exif="ignore"):
    """-> (uint8 [H, W, 3] RGB, orientation note: see oriented). exif: "apply" turns the pixels as the file's EXIF
    orientation says (as viewers show the image), "ignore" keeps them as stored."""
    return oriented(*decode(path), exif)


def pil_to_rgb(image, exif="apply"):
    """A PIL image -> (uint8 [H, W, 3] RGB, orientation note), its EXIF orientation applied or not as read_image."""
    return oriented(*pil_pixels(image), exif)


def read_rgb(path, exif="ignore"):
    """read_image's pixels alone; with exif="ignore" the tag is not even read (the built-in datasets' path)."""
    return read_image(path, exif)[0] if exif == "apply" else decode(path, with_orientation=False)[0]


def image_size(path, exif="ignore"):
    """(width, height) of the image file as read_image gives it, from its header alone."""
    try:
        with open_image(path) as pil:
            width, height = pil.size
            turned = exif == "apply" and "original_orientation" not in pil.info and pil_orientation(pil) in TRANSPOSING
    except ValueError as err:
        raise ValueError(f"cannot read image {path}: {err}") from None
    return (height, width) if turned else (width, height)


def add_image_flags(parser, max_pixels=MAX_PIXELS):
    """--max_image_pixels and --full_decode of the scripts that read photos (predict.py, app.py)."""
    parser.add_argument("--max_image_pixels", type=int, default=max_pixels,
                        help="larger images are refused, from their header, before anything is decoded (Pillow's own "
                             "limit, twice its default, also applies)")
    parser.add_argument("--full_decode", action="store_true",
                        help="decode every image whole (by default a JPEG far larger than the model's canvas is "
                             "decoded at 1/2, 1/4 or 1/8 of its size: faster, boxes within a pixel at the canvas)")
