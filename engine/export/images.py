"""Images for the parity stages and INT8 calibration (and `segadapt predict`'s file list): files of a directory or
freshly generated synthshift "photo" images, resized to the export size and normalised per the config."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from segadapt.config import Config


def parity_images(cfg: Config, size: tuple[int, int], count: int, images_dir: str | None = None) -> Tensor:
    """Real images for the parity stages: files of `images_dir`, else freshly generated synthshift "photo" images.

    Returns:
        (count, 3, H, W) float32, normalised per `cfg.data`, resized to `size` = (W, H).
    """
    from segadapt.data.synthshift import generate

    if images_dir:
        files = image_files([images_dir])[:count]
        return prepare_files(files, cfg, size)
    with tempfile.TemporaryDirectory() as scratch:
        generate(scratch, seed=cfg.data.synthshift.seed, size=size, count=max(count, 4), formats=("cityscapes",))
        files = sorted(Path(scratch).glob("cityscapes/leftImg8bit/*/*/*.png"))[:count]
        return prepare_files(files, cfg, size)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm")


def image_files(inputs: list[str]) -> list[Path]:
    """Image files named directly or found (sorted, not recursively) in the named directories."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()))
        elif path.is_file():
            files.append(path)
        else:
            raise ValueError(f"image input {path} does not exist (expected an image file or a directory of images)")
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {', '.join(inputs)}")
    return files


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 -> (H', W', 3) uint8 at `size` = (W', H'), bicubic like the loaders; a no-op at that size."""
    from PIL import Image

    if image.shape[1] == size[0] and image.shape[0] == size[1]:
        return image
    return np.asarray(Image.fromarray(image).resize(tuple(size), Image.BICUBIC))


def prepare_files(files: list[Path], cfg: Config, size: tuple[int, int]) -> Tensor:
    from segadapt.data.batch import normalize
    from segadapt.data.datasets import read_image

    images = [resize_image(read_image(path), size) for path in files]
    batch = torch.from_numpy(np.stack(images))
    return normalize(batch, cfg.data, torch.device("cpu")).contiguous()
