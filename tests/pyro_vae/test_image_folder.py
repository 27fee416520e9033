"""Image folders: class sub-folders become labels, pixels are Pillow's, sizes change only
when asked, and every bad folder is refused before training."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from pyro.infer import Trace_ELBO

from pyro_vae import TrainConfig, fit
from pyro_vae.cli import main
from pyro_vae.data import Preprocessing, load_data
from pyro_vae.image_folder import ImageFolderError, read_image_folder

FAST = ["--epochs", "1", "--no-progress", "--hidden", "8", "--latent-dim", "2"]


def write_folder(root, classes=("cat", "dog"), per_class=5, size=(4, 6), mode="RGB", seed=0):
    """Random 8-bit images, ``per_class`` a class; returns {path: pixels as saved}."""
    rng = np.random.default_rng(seed)
    channels = {"RGB": (3,), "L": ()}[mode]
    saved = {}
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, size=(*size, *channels), dtype=np.uint8)
            path = root / name / f"{i}.png"
            Image.fromarray(pixels, mode).save(path)
            saved[path] = pixels
    return saved


def test_colour_images_are_read_channels_first_with_their_class_labels(tmp_path):
    saved = write_folder(tmp_path, classes=("b_dog", "a_cat"), per_class=3)
    (tmp_path / "a_cat" / "notes.txt").write_text("not an image")
    folder = read_image_folder(tmp_path)
    assert folder.classes == ("a_cat", "b_dog")  # sorted: labels do not depend on disk order
    assert folder.images.shape == (6, 3, 4, 6) and folder.images.dtype == np.uint8
    assert folder.labels.tolist() == [0, 0, 0, 1, 1, 1]
    for path, image, label in zip(folder.files, folder.images, folder.labels, strict=True):
        assert np.array_equal(image, saved[path].transpose(2, 0, 1))  # PNG is lossless
        assert folder.classes[label] == path.parent.name


def test_greyscale_images_are_h_by_w_and_a_mixed_folder_is_all_rgb(tmp_path):
    grey = write_folder(tmp_path / "grey", mode="L", per_class=2)
    folder = read_image_folder(tmp_path / "grey")
    assert folder.images.shape == (4, 4, 6)
    assert all(np.array_equal(i, grey[p]) for p, i in zip(folder.files, folder.images, strict=True))
    write_folder(tmp_path / "mixed", classes=("a",), mode="L", per_class=1)
    Image.new("RGB", (6, 4), (10, 20, 30)).save(tmp_path / "mixed" / "a" / "z.png")
    mixed = read_image_folder(tmp_path / "mixed")
    assert mixed.images.shape == (2, 3, 4, 6)
    assert mixed.images[1, :, 0, 0].tolist() == [10, 20, 30]
    first = mixed.images[0]  # grey converted to RGB: three equal channels
    assert np.array_equal(first[0], first[1]) and np.array_equal(first[1], first[2])


def test_sizes_change_only_when_asked(tmp_path):
    write_folder(tmp_path, classes=("a",), per_class=1, size=(4, 8))
    Image.new("RGB", (8, 8), (255, 0, 0)).save(tmp_path / "a" / "square.png")
    with pytest.raises(ImageFolderError, match=r"is 4x8 .* but .*square.png is 8x8.*--image-size"):
        read_image_folder(tmp_path)
    resized = read_image_folder(tmp_path, image_size=(2, 3))
    assert resized.images.shape == (2, 3, 2, 3)
    assert (resized.images[1] == np.array([255, 0, 0])[:, None, None]).all()
    # crop keeps the aspect ratio: a 4x8 image left half white, right half black, cropped
    # to 4x4, keeps only the middle: the two central columns' boundary
    halves = np.zeros((4, 8), dtype=np.uint8)
    halves[:, :4] = 255
    (tmp_path / "b").mkdir()
    Image.fromarray(halves, "L").save(tmp_path / "b" / "h.png")
    cropped = read_image_folder(tmp_path, image_size=(4, 4), crop=True)
    centre = cropped.images[-1].mean(0)  # the grey image, as RGB
    assert centre[:, 0].min() == 255 and centre[:, -1].max() == 0


def test_jpeg_images_are_read(tmp_path):
    (tmp_path / "a").mkdir()
    Image.new("RGB", (5, 5), (200, 100, 50)).save(tmp_path / "a" / "x.JPG", quality=95)
    folder = read_image_folder(tmp_path)
    assert np.abs(folder.images[0, :, 2, 2].astype(int) - [200, 100, 50]).max() <= 3  # lossy


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda root: None, ["is empty"]),
        (lambda root: (root / "x.png").write_bytes(b"0"), ["no class sub-folders"]),
        (lambda root: (root / "cat").mkdir(), ["class folder", "cat", "holds no images"]),
        (
            lambda root: ((root / "cat").mkdir(), (root / "cat" / "a.png").write_text("no")),
            ["a.png is not an image Pillow can read"],
        ),
        (
            lambda root: (
                (root / "cat").mkdir(),
                Image.new("I;16", (3, 3)).save(root / "cat" / "a.png"),
            ),
            ["mode 'I;16'", "expected 8-bit"],
        ),
    ],
    ids=["empty", "no-classes", "empty-class", "unreadable", "16-bit"],
)
def test_a_bad_folder_is_refused_naming_what_is_wrong(tmp_path, make, words):
    make(tmp_path)
    with pytest.raises(ImageFolderError) as raised:
        read_image_folder(tmp_path)
    for word in words:
        assert word in str(raised.value)


def test_a_truncated_image_is_refused_naming_it(tmp_path):
    write_folder(tmp_path, classes=("a",), per_class=1, size=(32, 32))
    path = tmp_path / "a" / "0.png"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ImageFolderError, match="0.png could not be decoded"):
        read_image_folder(tmp_path)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"image_size": (0, 4)}, "image_size: (0, 4)"),
        ({"image_size": (4,)}, "image_size: (4,)"),
        ({"crop": True}, "crop: True needs image_size"),
    ],
)
def test_bad_size_options_are_named(tmp_path, kwargs, words):
    write_folder(tmp_path, per_class=1)
    with pytest.raises(ValueError) as raised:
        read_image_folder(tmp_path, **kwargs)
    assert words in str(raised.value)


def test_a_colour_folder_trains_from_python_and_the_command_line(tmp_path):
    write_folder(tmp_path / "data", per_class=6)
    data = load_data(f"images:{tmp_path / 'data'}", Preprocessing("gaussian"))
    assert data.image_shape == (3, 4, 6) and data.x_dim == 72
    assert data.info["classes"] == ["cat", "dog"]
    from models.vae import VAE

    model = VAE(data.x_dim, latent_dim=2, hidden_dims=(8,), likelihood="gaussian")
    config = TrainConfig(epochs=1, progress=False)
    result = fit(model, model.make_guide(), data, Trace_ELBO(), config)
    assert np.isfinite(result.history[-1]["train_elbo"])
    out = tmp_path / "run"
    argv = ["fit", "--data", f"images:{tmp_path / 'data'}", "--image-size", "3", "3"]
    assert (
        main([*argv, "--likelihood", "gaussian", *FAST, "--ll-samples", "3", "--out", str(out)])
        == 0
    )
    config = json.loads((out / "config.json").read_text())["data"]
    assert config["image_size"] == [3, 3] and config["name"].startswith("images:/")
    with Image.open(out / "reconstructions.png") as png:
        rgb = np.asarray(png.convert("RGB")).astype(int)
    assert (np.abs(rgb[..., 0] - rgb[..., 1]) > 30).sum() > 100  # drawn in colour, not grey
    assert main(["evaluate", str(out), "--ll-samples", "3"]) == 0
    assert torch.equal(load_data(f"images:{tmp_path / 'data'}").train_y, data.train_y)


def test_nested_images_and_torchvisions_formats_are_read_and_the_rest_named(tmp_path):
    """Tester P: PNGs one folder below a class folder and .webp files were skipped without
    a word (2 of 17 images read). As in torchvision's ImageFolder, a class's images are
    every image file under its folder; the files left out are listed."""
    saved = write_folder(tmp_path, classes=("a", "b"), per_class=2, mode="L")
    rng = np.random.default_rng(1)
    for path in (tmp_path / "a" / "x" / "0.png", tmp_path / "b" / "y" / "z" / "0.webp"):
        path.parent.mkdir(parents=True)
        saved[path] = rng.integers(0, 256, size=(4, 6), dtype=np.uint8)
        Image.fromarray(saved[path], "L").save(path, lossless=True)
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    (tmp_path / "top.png").write_bytes(b"beside the classes")
    (tmp_path / "b" / ".hidden.png").write_bytes(b"hidden")
    folder = read_image_folder(tmp_path)
    assert sorted(folder.files) == sorted(saved)
    for path, image, label in zip(folder.files, folder.images, folder.labels, strict=True):
        # WebP has no grey mode, so the folder is RGB: each grey image in all three channels
        assert np.array_equal(image, np.broadcast_to(saved[path], image.shape))
        assert folder.classes[label] == path.relative_to(tmp_path).parts[0]
    assert folder.left_out == (tmp_path / "a" / "notes.txt", tmp_path / "top.png")
    # tester Q: the one colour file that made the grey folder RGB is named
    assert folder.colour == (tmp_path / "b" / "y" / "z" / "0.webp",)
    info = load_data(f"images:{tmp_path}").info
    assert info["colour_files"] == [str(tmp_path / "b" / "y" / "z" / "0.webp")]


def test_only_a_mixed_folder_names_its_colour_files(tmp_path):
    for mode in ("RGB", "L"):
        write_folder(tmp_path / mode, mode=mode)
        assert read_image_folder(tmp_path / mode).colour == ()


def test_a_linked_folder_under_a_class_is_read_as_torchvision_reads_it(tmp_path):
    # tester Q: os.walk does not follow links unless asked; torchvision's make_dataset does
    saved = write_folder(tmp_path / "data", classes=("a", "b"), per_class=2, mode="L")
    extra = write_folder(tmp_path / "elsewhere", classes=("more",), per_class=3, mode="L")
    (tmp_path / "data" / "a" / "linked").symlink_to(tmp_path / "elsewhere" / "more")
    folder = read_image_folder(tmp_path / "data")
    assert len(folder.files) == len(saved) + len(extra) == 7
    assert folder.labels.tolist().count(0) == 5


def test_a_link_to_a_folder_above_is_entered_once(tmp_path):
    # tester FB: os.walk follows such a loop until the path is too long; each of class a's
    # images was read 41 times, outweighing class b 492 to 12 and landing in every split
    saved = write_folder(tmp_path, classes=("a", "b"), per_class=3, mode="L")
    (tmp_path / "a" / "self").symlink_to(tmp_path / "a")
    (tmp_path / "b" / "sub").mkdir()
    (tmp_path / "b" / "sub" / "up").symlink_to(tmp_path / "b")  # a loop one level down
    folder = read_image_folder(tmp_path)
    assert sorted(map(str, folder.files)) == sorted(map(str, saved))
    assert folder.labels.tolist() == [0, 0, 0, 1, 1, 1]


@pytest.mark.parametrize("target", ["b", "a"], ids=["other-class", "own-class"])
def test_an_image_reached_by_two_links_is_refused_naming_both(tmp_path, target):
    # tester FB: a link to another class's folder gave its images two labels, unsaid
    write_folder(tmp_path / "data", classes=("a", "b"), per_class=2, mode="L")
    write_folder(tmp_path / "elsewhere", classes=("c",), per_class=1, mode="L")
    source = tmp_path / "data" / target
    (tmp_path / "data" / "a" / "linked").symlink_to(source)
    if target == "a":  # a link inside its own class to a file already read
        (tmp_path / "data" / "a" / "linked").unlink()
        (tmp_path / "data" / "a" / "copy.png").symlink_to(source / "0.png")
    with pytest.raises(ImageFolderError) as refused:
        read_image_folder(tmp_path / "data")
    message = str(refused.value)
    assert f"{source / '0.png'}" in message and "same file" in message
    assert ("classes 'a' and 'b'" if target == "b" else "both in class 'a'") in message


def test_a_palette_image_of_grey_pixels_is_grey_and_of_colour_pixels_colour(tmp_path):
    # tester U: grey PNGs saved with a palette (as GIFs always are) made the folder RGB
    grey = write_folder(tmp_path / "grey", mode="L", per_class=2)
    for path in grey:  # the same pixels through a grey palette: P mode on disk
        Image.open(path).convert("P").save(path)
        assert Image.open(path).mode == "P"
    first = next(iter(grey))  # one with a transparent palette entry, as a P image's tRNS
    Image.fromarray(grey[first], "L").convert("P").save(tmp_path / "grey/cat/t.png", transparency=0)
    folder = read_image_folder(tmp_path / "grey")
    assert folder.images.shape[1:] == (4, 6) and folder.colour == ()
    read = dict(zip(folder.files, folder.images, strict=True))
    assert all(np.array_equal(read[p], pixels) for p, pixels in grey.items())  # exact
    assert np.array_equal(read[tmp_path / "grey" / "cat" / "t.png"], grey[first])
    # one palette entry off grey, used by one pixel, makes that image (and so the folder) RGB
    pixels = np.full((4, 6, 3), 7, dtype=np.uint8)
    pixels[0, 0] = (7, 7, 8)
    Image.fromarray(pixels, "RGB").convert("P", palette=Image.Palette.ADAPTIVE).save(
        tmp_path / "grey" / "dog" / "c.png"
    )
    mixed = read_image_folder(tmp_path / "grey")
    assert mixed.images.shape[1:] == (3, 4, 6)
    assert mixed.colour == (tmp_path / "grey" / "dog" / "c.png",)
