"""A folder of PNG/JPEG images, one sub-folder per class, read with Pillow.

Layout (as torchvision's ``ImageFolder``)::

    DIR/cat/0001.png  DIR/cat/0002.jpg  ...  DIR/dog/0001.png  ...

Classes are the sub-folders in sorted name order; an image's label is its class's index.
As in torchvision, a class's images are the files anywhere under its folder (nested
folders too) whose names end in one of :data:`IMAGE_SUFFIXES` (any case); hidden files and
folders are left alone, and any other file (a text file, a file beside the class folders)
is left out and listed in :attr:`ImageFolder.left_out`, which ``fit`` reports (tester P:
images one folder deeper, and ``.webp`` files, were skipped without a word).

Decoding is Pillow's (PNG, JPEG and their variants, palette and alpha included), not ours:
a decoder of our own would be a second, less tested copy of one. Every image is read
into memory as 8-bit pixels (N·C·H·W bytes):

- greyscale when every image is (Pillow modes ``1``, ``L``, ``LA``, and a palette image,
  ``P`` or ``PA``, whose pixels are all grey, R = G = B: a grey GIF, or a PNG saved with a
  palette; tester U's grey palette PNGs were made three channels): ``[N, H, W]``;
  otherwise every image is converted to RGB (alpha dropped, palettes expanded) and the
  array is ``[N, 3, H, W]``, channels first as everywhere in pyro_vae.
- sizes are never changed unless asked: ``image_size=(H, W)`` resizes every image to it
  (Pillow's bicubic filter; the aspect ratio changes if it differs), and ``crop=True``
  with it keeps the aspect ratio, scaling each image to cover H x W and cutting the centre
  (``PIL.ImageOps.fit``). Without ``image_size`` all images must have one size.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: torchvision's ``IMG_EXTENSIONS``, all of which Pillow decodes.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
_GREY_MODES = {"1", "L", "LA"}
_COLOUR_MODES = {"P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "La", "RGBa"}


class ImageFolderError(ValueError):
    """A folder of images that cannot be a dataset; the message says which file and why."""


@dataclass(frozen=True)
class ImageFolder:
    """The images of a class-per-folder directory.

    Attributes:
        images: ``[N, H, W]`` (grey) or ``[N, 3, H, W]`` (RGB) ``uint8`` pixels.
        labels: ``[N]`` int64 class indices into ``classes``.
        classes: the class folders' names, sorted.
        files: each image's path, in the order of ``images``.
        left_out: the files under the folder that are not read (not hidden, not images of
            a class), sorted.
        colour: where grey and colour images are mixed, the colour ones, in the order of
            ``files`` (they make every image RGB, which ``fit`` reports: one ``.webp``,
            which Pillow always decodes as colour, turned a grey folder RGB unnamed,
            tester Q); else empty.
    """

    images: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]
    files: tuple[Path, ...]
    left_out: tuple[Path, ...] = ()
    colour: tuple[Path, ...] = ()


def read_image_folder(
    directory: str | os.PathLike,
    image_size: tuple[int, int] | None = None,
    crop: bool = False,
) -> ImageFolder:
    """Read every image under ``directory``'s class folders (module docstring).

    Args:
        directory: the folder holding one sub-folder per class.
        image_size: ``(H, W)`` to resize every image to, or ``None`` to keep their size.
        crop: with ``image_size``, keep the aspect ratio and cut the centre.

    Raises:
        ImageFolderError: an empty folder, no class folders, a class folder without
            images, an image reached by two paths (links; both named), a file Pillow
            cannot read, 16-bit or floating-point pixels, or images
            of different sizes without ``image_size`` (two files and their sizes named).
        ValueError: a bad ``image_size`` or ``crop`` without one.
    """
    size = check_image_size(image_size, crop)
    root = Path(directory)
    files, labels, classes, left_out = _listing(root)
    modes, sizes = zip(*(_header(path) for path in files), strict=True)
    mode = "L" if set(modes) <= _GREY_MODES else "RGB"
    if size is None:
        _check_one_size(files, sizes)
    pixels = np.stack([_pixels(path, mode, size, crop) for path in files])
    if mode == "RGB":
        pixels = np.ascontiguousarray(pixels.transpose(0, 3, 1, 2))
    labels_array = np.asarray(labels, dtype=np.int64)
    grey = [m in _GREY_MODES for m in modes]
    colour = tuple(f for f, g in zip(files, grey, strict=True) if not g) if any(grey) else ()
    return ImageFolder(pixels, labels_array, classes, tuple(files), tuple(left_out), colour)


def check_image_size(image_size: object, crop: bool) -> tuple[int, int] | None:
    """``image_size`` as an ``(H, W)`` tuple (``None`` stays ``None``), checked with ``crop``.

    Raises:
        ValueError: naming ``image_size`` unless it is two positive integers, or naming
            ``crop`` when it is set without an ``image_size`` to crop to.
    """
    if image_size is None:
        if crop:
            raise ValueError(
                "crop: True needs image_size, the (height, width) to crop an image folder's "
                "images to (crop and image_size apply to images:DIR only)"
            )
        return None
    if (
        not isinstance(image_size, list | tuple)
        or len(image_size) != 2
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in image_size)
    ):
        raise ValueError(
            f"image_size: {image_size!r}; expected (height, width), two positive integers"
        )
    return int(image_size[0]), int(image_size[1])


def _visible_files(folder: Path) -> list[Path]:
    """The files under ``folder``, nested folders and linked ones included (tester Q: a
    symlinked folder's images were skipped), hidden ones and those in hidden folders left
    out, in sorted order. A folder is entered once, however many links lead to it: a link
    to a folder above it (``ln -s . self``) is a loop, which ``os.walk`` follows until the
    path is too long (tester FB: each image of the class read 41 times)."""
    found = []
    entered = {os.path.realpath(folder)}
    for where, folders, names in os.walk(folder, followlinks=True):  # as torchvision does
        kept = []
        for name in sorted(f for f in folders if not f.startswith(".")):
            real = os.path.realpath(Path(where) / name)
            if real not in entered:
                entered.add(real)
                kept.append(name)
        folders[:] = kept
        found += [Path(where) / n for n in sorted(names) if not n.startswith(".")]
    return found


def _read_once(files: list[Path], labels: list[int], classes: list[Path]) -> None:
    """Refuse an image file reached by two paths (links): read twice, it would count twice
    and could fall in both the training and the test split; under two classes, it would
    have two labels (tester FB: a link to another class's folder)."""
    first: dict[str, tuple[Path, int]] = {}
    for path, label in zip(files, labels, strict=True):
        real = os.path.realpath(path)
        if real in first:
            other, other_label = first[real]
            where = (
                f"both in class {classes[label].name!r}"
                if label == other_label
                else f"in classes {classes[other_label].name!r} and {classes[label].name!r}"
            )
            raise ImageFolderError(
                f"data: {other} and {path} are the same file ({real}), {where}, through a "
                "link; expected each image once (read twice, it would count twice and could "
                "fall in both the training and the test split): remove one of the links"
            )
        first[real] = (path, label)


def _listing(root: Path) -> tuple[list[Path], list[int], tuple[str, ...], list[Path]]:
    """Image files, their labels, the class names and the files left out, in sorted
    order."""
    if not root.is_dir():
        raise ImageFolderError(
            f"data: {root} is not a directory; expected a folder of class sub-folders"
        )
    if not any(root.iterdir()):
        raise ImageFolderError(
            f"data: {root} is empty; expected one sub-folder of PNG/JPEG images per class"
        )
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise ImageFolderError(
            f"data: {root} has no class sub-folders; expected {root}/<class>/<image>.png, "
            "one sub-folder per class"
        )
    files: list[Path] = []
    labels: list[int] = []
    left_out = [p for p in sorted(root.iterdir()) if p.is_file() and not p.name.startswith(".")]
    for label, folder in enumerate(class_dirs):
        visible = _visible_files(folder)
        images = [p for p in visible if p.suffix.lower() in IMAGE_SUFFIXES]
        left_out += [p for p in visible if p.suffix.lower() not in IMAGE_SUFFIXES]
        if not images:
            raise ImageFolderError(
                f"data: class folder {folder} holds no images; expected files ending in "
                f"{', '.join(IMAGE_SUFFIXES)}"
            )
        files += images
        labels += [label] * len(images)
    _read_once(files, labels, class_dirs)
    return files, labels, tuple(p.name for p in class_dirs), sorted(left_out)


def _open(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        return Image.open(path)
    except (UnidentifiedImageError, OSError) as err:
        raise ImageFolderError(
            f"data: {path} is not an image Pillow can read ({err}); expected a PNG or JPEG file"
        ) from err


def _header(path: Path) -> tuple[str, tuple[int, int]]:
    """The file's Pillow mode and its (height, width), from the header alone; ``L`` for a
    palette image whose pixels are all grey (decoded for that, :func:`_grey_palette`)."""
    with _open(path) as image:
        if image.mode not in _GREY_MODES | _COLOUR_MODES:
            raise ImageFolderError(
                f"data: {path} has Pillow mode {image.mode!r} (16-bit or floating-point "
                "pixels); expected 8-bit greyscale or colour images"
            )
        grey = image.mode in ("P", "PA") and _grey_palette(image, path)
        return "L" if grey else image.mode, (image.height, image.width)


def _grey_palette(image, path: Path) -> bool:
    """Whether every pixel of the palette image is grey (R = G = B), so that Pillow's
    conversion to ``L`` (ITU-R 601-2 luma, weights summing to one) keeps each value
    exactly."""
    try:
        rgb = np.asarray(image.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as err:  # truncated or corrupt image data
        raise ImageFolderError(
            f"data: {path} could not be decoded ({err}); expected a complete PNG or JPEG"
        ) from err
    return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())


def _check_one_size(files: list[Path], sizes: tuple[tuple[int, int], ...]) -> None:
    for path, size in zip(files, sizes, strict=True):
        if size != sizes[0]:
            raise ImageFolderError(
                f"data: {files[0]} is {sizes[0][0]}x{sizes[0][1]} (height x width) but {path} "
                f"is {size[0]}x{size[1]}; images of one dataset need one size: pass "
                "--image-size H W (image_size=(H, W)) to resize them, with --crop to keep "
                "their aspect ratio"
            )


def _pixels(path: Path, mode: str, size: tuple[int, int] | None, crop: bool) -> np.ndarray:
    """The decoded image in ``mode`` (``L`` or ``RGB``), resized or cropped to ``size``."""
    from PIL import Image, ImageOps

    with _open(path) as image:
        try:
            image = image.convert(mode)
        except (OSError, SyntaxError, ValueError) as err:  # truncated or corrupt image data
            raise ImageFolderError(
                f"data: {path} could not be decoded ({err}); expected a complete PNG or JPEG"
            ) from err
        if size is not None:
            height, width = size
            bicubic = Image.Resampling.BICUBIC
            if crop:
                image = ImageOps.fit(image, (width, height), method=bicubic)
            else:
                image = image.resize((width, height), bicubic)
        return np.asarray(image, dtype=np.uint8)
