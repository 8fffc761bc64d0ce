"""Faces aligned on 5 points (dlib's shape predictor, then `get_face_chip`), as face recognisers see them.

A recogniser trained on millions of faces gets each face warped so that its eyes, nose and mouth fall on
the same pixels. A face crop (a detector's box grown 1.5×, as in ../shared's CelebA subset) still turns,
tilts and shifts from image to image, and a small student with a few thousand images spends its capacity on
that. `convert --face_align` stores every image as its aligned chip (`layouts.aligned_faces`); the dlib
teacher aligns its own input with the same `Aligner`, so that student and teacher see the same face.

The images must be face crops: the predictor runs on the box of each image's middle two thirds, with no
detector. Needs dlib (pip install -r requirements-teachers.txt); nothing here imports TensorFlow.
"""
from __future__ import annotations

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
