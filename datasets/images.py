"""Reading an image file as RGB pixels, in the orientation its EXIF tag asks for or as stored (docs/evaluation.md,
"Photo orientation").

Phones store most photos sideways and record how to turn them in the EXIF orientation tag (0x0112, values 1-8),
which every viewer applies. `exif="apply"` gives the image as a viewer shows it (what prediction wants, and what
annotation tools show), `exif="ignore"` the stored pixels (what the REFER / ReferIt / Flickr boxes refer to, as in
the original). HEIC / HEIF files read through the optional pillow-heif package; their rotation is part of the
format (libheif always applies it), so they read upright whatever `exif` says.
"""
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

EXIF_MODES = ("apply", "ignore")
ORIENTATION_TAG = 0x0112
# Tags whose turn swaps width and height.
TRANSPOSING = (5, 6, 7, 8)
# The ISO base media "ftyp" brands of HEIF still images (AVIF's are read by Pillow itself).
HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1", b"msf1"}
_heif = {"registered": None}


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


def heif_available():
    """Registers pillow-heif's opener with PIL once; False when the package is not installed."""
    if _heif["registered"] is None:
        try:
            import pillow_heif
        except ImportError:
            _heif["registered"] = False
        else:
            pillow_heif.register_heif_opener()
            _heif["registered"] = True
    return _heif["registered"]


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
        if rgb is not None:
            if not with_orientation:
                return cv2.cvtColor(rgb, cv2.COLOR_BGR2RGB), 1, False
            with Image.open(path) as pil:
                return cv2.cvtColor(rgb, cv2.COLOR_BGR2RGB), pil_orientation(pil), False
        if is_heif(path) and not heif_available():
            raise ValueError("HEIC / HEIF images need the pillow-heif package: pip install pillow-heif (it is in "
                             "requirements-app.txt), or convert the file to JPEG")
        with Image.open(path) as pil:
            # np.array: a writable copy (torch warns about read-only arrays)
            return np.array(pil.convert("RGB")), pil_orientation(pil), "original_orientation" in pil.info
    except Exception as err:
        raise ValueError(f"cannot read image {path}: {err}") from err


def orientation_note(orientation, applied):
    """What a prediction record says of an image's EXIF orientation: nothing for 1, else the tag and whether the
    pixels were turned ("apply") or kept as stored ("ignore")."""
    return {} if orientation == 1 else {"exif_orientation": orientation, "exif": "apply" if applied else "ignore"}


def read_image(path, exif="ignore"):
    """-> (uint8 [H, W, 3] RGB, orientation_note). exif: "apply" turns the pixels as the file's EXIF orientation
    says (as viewers show the image), "ignore" keeps them as stored."""
    if exif not in EXIF_MODES:
        raise ValueError(f"unknown EXIF mode {exif!r}; choose from {', '.join(EXIF_MODES)}")
    rgb, orientation, turned = decode(path)
    if exif == "apply" and not turned:
        rgb = orient(rgb, orientation)
    return rgb, orientation_note(orientation, exif == "apply" or turned)


def pil_to_rgb(image, exif="apply"):
    """A PIL image -> (uint8 [H, W, 3] RGB, orientation_note), its EXIF orientation applied or not as read_image."""
    orientation = pil_orientation(image)
    turned = "original_orientation" in image.info
    rgb = np.array(image.convert("RGB"))  # a writable copy: torch warns about read-only arrays
    if exif == "apply" and not turned:
        rgb = orient(rgb, orientation)
    return rgb, orientation_note(orientation, exif == "apply" or turned)


def read_rgb(path, exif="ignore"):
    """read_image's pixels alone; with exif="ignore" the tag is not even read (the built-in datasets' path)."""
    return read_image(path, exif)[0] if exif == "apply" else decode(path, with_orientation=False)[0]


def image_size(path, exif="ignore"):
    """(width, height) of the image file as read_image gives it, from its header alone."""
    if is_heif(path) and not heif_available():
        raise ValueError(f"cannot read image {path}: HEIC / HEIF images need the pillow-heif package: "
                         f"pip install pillow-heif")
    with Image.open(path) as pil:
        width, height = pil.size
        turned = exif == "apply" and "original_orientation" not in pil.info and pil_orientation(pil) in TRANSPOSING
    return (height, width) if turned else (width, height)
