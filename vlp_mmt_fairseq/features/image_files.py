"""Image files for the feature extractors: which images to read (a folder, a list file, a split's image index)
and how to read one (any mode PIL opens, EXIF orientation applied, alpha over white, RGB out).
"""
import os
from dataclasses import dataclass
from typing import Dict, List, Optional

from vlp_mmt_fairseq.data.feature_store import image_key_from_line, read_image_index
from vlp_mmt_fairseq.errors import PluginError

#: file name endings taken from a folder (case-insensitive)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


class ImageFileError(PluginError, ValueError):
    """An image list or an image that cannot be used; the message names the file."""


@dataclass(frozen=True)
class ImageFile:
    """One image to extract: its store key and where it is."""

    key: str
    path: str


def _pil():
    try:
        from PIL import Image, ImageOps
    except ImportError as e:
        raise ImportError("reading images needs Pillow: pip install Pillow") from e
    return Image, ImageOps


def load_rgb(path: str):
    """The image at ``path`` as an upright RGB ``PIL.Image``.

    EXIF orientation is applied; transparent pixels are laid over white; grayscale, palette, CMYK and
    16-bit images are converted. Raises :class:`ImageFileError` naming the file if it cannot be decoded.
    """
    Image, ImageOps = _pil()
    try:
        with Image.open(path) as image:
            image.load()  # decode now: a truncated or corrupt file fails here, not later
            image = ImageOps.exif_transpose(image)
            if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
                rgba = image.convert("RGBA")
                background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                return Image.alpha_composite(background, rgba).convert("RGB")
            if image.mode == "I;16" or image.mode == "I":
                image = image.point(lambda v: v / 256).convert("L")  # 16-bit grayscale to 8 bits
            return image.convert("RGB")
    except FileNotFoundError:
        raise ImageFileError(f"{path}: image not found") from None
    except (OSError, ValueError, SyntaxError) as e:  # PIL's UnidentifiedImageError is an OSError
        raise ImageFileError(f"{path}: cannot read the image ({e})") from None


def _unique(images: List[ImageFile], where: str) -> List[ImageFile]:
    """Each key once (an image index names an image once per sentence); one key for two files is an error."""
    seen: Dict[str, str] = {}
    out = []
    for image in images:
        previous = seen.get(image.key)
        if previous is None:
            seen[image.key] = image.path
            out.append(image)
        elif os.path.abspath(previous) != os.path.abspath(image.path):
            raise ImageFileError(f"{where}: two images have the key '{image.key}': {previous} and {image.path}")
    return out


def images_in_folder(folder: str) -> List[ImageFile]:
    """The image files directly in ``folder``, sorted by name; the key is the file name without extension."""
    if not os.path.isdir(folder):
        raise ImageFileError(f"{folder}: folder not found")
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS))
    if not names:
        raise ImageFileError(f"{folder}: no image files in it (looked for {', '.join(IMAGE_EXTENSIONS)})")
    return _unique([ImageFile(image_key_from_line(n), os.path.join(folder, n)) for n in names], folder)


def images_in_list(list_file: str, image_dir: Optional[str] = None) -> List[ImageFile]:
    """The images of a list file, one path per line (relative paths from ``image_dir``, else from the list's
    folder); a ``#...`` suffix is dropped, as in Multi30K's image lists. Keys follow ``image_key_from_line``."""
    if not os.path.isfile(list_file):
        raise ImageFileError(f"{list_file}: image list not found")
    base = image_dir if image_dir is not None else os.path.dirname(os.path.abspath(list_file))
    images = []
    with open(list_file, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            name = line.strip().split("#", 1)[0]
            if not name:
                raise ImageFileError(f"{list_file}:{lineno}: empty line")
            images.append(ImageFile(image_key_from_line(name), os.path.join(base, name)))
    if not images:
        raise ImageFileError(f"{list_file}: the image list is empty")
    return _unique(images, list_file)


def images_in_index(index_file: str, image_dir: str) -> List[ImageFile]:
    """The images of a prepared split's image index (``{split}.img.txt`` or ``.npy``), found in ``image_dir``.

    A ``.txt`` index names the files; a ``.npy`` index holds keys only, so each key is looked up in
    ``image_dir`` as ``key.<extension>``.
    """
    if index_file.endswith(".txt"):
        return images_in_list(index_file, image_dir)
    keys = list(dict.fromkeys(k.decode("utf-8") for k in read_image_index(index_file).tolist()))
    if not os.path.isdir(image_dir):
        raise ImageFileError(f"{image_dir}: image folder not found")
    by_key: Dict[str, str] = {}
    for name in sorted(os.listdir(image_dir)):
        if name.lower().endswith(IMAGE_EXTENSIONS):
            by_key.setdefault(os.path.splitext(name)[0], os.path.join(image_dir, name))
    missing = [k for k in keys if k not in by_key]
    if missing:
        raise ImageFileError(f"{index_file}: image '{missing[0]}' (and {len(missing) - 1} more) not found in "
                             f"{image_dir}")
    return [ImageFile(k, by_key[k]) for k in keys]


def find_images(source: str, image_dir: Optional[str] = None) -> List[ImageFile]:
    """The images named by ``source``: a folder, a prepared split's image index (``*.img.txt``, ``*.npy``;
    needs ``image_dir``) or a list file (one image path per line)."""
    if os.path.isdir(source):
        return images_in_folder(source)
    if source.endswith(".npy") or source.endswith(".img.txt"):
        if image_dir is None:
            raise ImageFileError(f"{source}: an image index names images without their folder; pass --image-dir")
        return images_in_index(source, image_dir)
    return images_in_list(source, image_dir)
