"""Faces aligned on 5 points (dlib's shape predictor, then `get_face_chip`), as face recognisers see them.

A recogniser trained on millions of faces gets each face warped so that its eyes, nose and mouth fall on
the same pixels. A face crop (a detector's box grown 1.5×, as in ../shared's CelebA subset) still turns,
tilts and shifts from image to image, and a small student with a few thousand images spends its capacity on
that. `convert --face_align` stores every image as its aligned chip; the dlib teacher aligns its own input
with the same `Aligner`, so that student and teacher see the same face.

The images must be face crops: the predictor runs on the box of each image's middle two thirds, with no
detector. Needs dlib (pip install -r requirements-teachers.txt); nothing here imports TensorFlow.
"""
from __future__ import annotations

import dataclasses
import io
from typing import Optional

import numpy as np

NEEDS = "dlib is not installed: pip install -r requirements-teachers.txt"
PADDING = 0.25  # dlib's get_face_chip default, the margin its face recognition network was trained with


class DlibMissing(RuntimeError):
    """dlib or face_recognition_models (its model files) is not installed."""


def import_dlib():
    """(dlib, face_recognition_models), or DlibMissing with the install line."""
    try:
        import dlib
        import face_recognition_models
    except ImportError as e:  # pkg_resources (setuptools) missing is one: face_recognition_models imports it
        raise DlibMissing(f"{NEEDS} ({type(e).__name__}: {e})") from None
    return dlib, face_recognition_models


def middle_box(height: int, width: int) -> tuple:
    """(left, top, right, bottom), inclusive as dlib's rectangles are: the middle two thirds of the image."""
    dx, dy = round(width / 6), round(height / 6)
    return dx, dy, width - 1 - dx, height - 1 - dy


class Aligner:
    """uint8 RGB face crop [H, W, 3] → its aligned `size`×`size` chip (uint8 RGB)."""

    def __init__(self, size: int = 150, padding: float = PADDING):
        self.dlib, models = import_dlib()
        self.predictor = self.dlib.shape_predictor(models.pose_predictor_five_point_model_location())
        self.size, self.padding = int(size), float(padding)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        image = np.ascontiguousarray(image, np.uint8)
        shape = self.predictor(image, self.dlib.rectangle(*middle_box(*image.shape[:2])))
        chip = self.dlib.get_face_chip(image, shape, size=self.size, padding=self.padding)
        return np.ascontiguousarray(chip, np.uint8)


def aligned_faces(items: list, size: int, aligner: Optional[Aligner] = None) -> list:
    """Each item (`example.Item`) as its aligned `size`×`size` chip, read lazily like every item.

    Items with landmarks are refused (DataError): the chip's warp would have to move them too.
    """
    from keras_kd.data.example import DataError

    for it in items:
        if it.landmarks is not None:
            raise DataError(f"{it.origin or it.source}: has landmarks, which --face_align does not move "
                            "(use --face_crop for landmark sets)")
    aligner = aligner or Aligner(size)
    return [dataclasses.replace(it, load=_aligned_load(it.load, aligner, it.source)) for it in items]


def _aligned_load(load, aligner: Aligner, source: str):
    def read() -> bytes:
        from PIL import Image

        try:
            with Image.open(io.BytesIO(load())) as im:
                rgb = np.asarray(im.convert("RGB"))
        except (OSError, ValueError, SyntaxError) as e:  # counted and skipped by write_dataset
            raise OSError(f"cannot decode {source}: {e}") from None
        out = io.BytesIO()
        Image.fromarray(aligner(rgb)).save(out, format="PNG")
        return out.getvalue()
    return read
