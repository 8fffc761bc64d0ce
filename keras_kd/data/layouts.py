"""Readers of the on-disk layouts real face sets come in; each returns `(items, pairs)` for `write_dataset`.

An item's `source` is its path relative to the root given, with "/" separators: pairs refer to images by it,
and it is what ends up in the records. Readers only list and parse; images are read lazily by `Item.load`, so
an undecodable file is counted and skipped by `write_dataset` instead of failing here. Bad listings (missing
folder or file, malformed line, listed image not on disk) raise `DataError` naming the file and line.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import os
from typing import Optional

import numpy as np

from keras_kd.data.example import NUM_LANDMARKS, DataError, Item
from keras_kd.keras import tf

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".ppm")
TF_DECODES = (".jpg", ".jpeg", ".png", ".bmp")  # the rest (PGM/PPM of AT&T/ORL) go through Pillow
UNKNOWN = "unknown"  # the one label of sets without identities

Pairs = list[tuple[str, str, int]]


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _pil_rgb(file, source: str):
    """The image of `file` (a path or a file object) as a Pillow RGB image; Pillow's errors become OSError
    naming `source`, which `write_dataset` counts and skips."""
    from PIL import Image

    try:
        with Image.open(file) as im:
            return im.convert("RGB")
    except (OSError, ValueError, SyntaxError) as e:
        raise OSError(f"cannot decode {source}: {e}") from None


def _read_as_png(path: str) -> bytes:
    """Re-encodes what TF cannot decode."""
    return tf.io.encode_png(np.asarray(_pil_rgb(path, path))).numpy()


def _loader(path: str):
    read = _read_bytes if path.lower().endswith(TF_DECODES) else _read_as_png
    return functools.partial(read, path)


def _is_image(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _require_dir(path: str) -> None:
    if not os.path.isdir(path):
        raise DataError(f"{path}: {'not a directory' if os.path.exists(path) else 'directory does not exist'}")


def _read_lines(path: str) -> list[tuple[int, list[str]]]:
    """(line number, tokens) of the non-blank, non-comment lines of a text file."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: file does not exist")
    with open(path, encoding="utf-8", errors="replace") as f:
        return [(n, line.split()) for n, line in enumerate(f, 1) if line.strip() and not line.lstrip().startswith("#")]


def _floats(path: str, n: int, tokens: list[str], what: str) -> np.ndarray:
    try:
        return np.array([float(t) for t in tokens], np.float32)
    except ValueError:
        raise DataError(f"{path}:{n}: {what} must be numbers, got {' '.join(tokens)!r}") from None


def folder_per_identity(root: str) -> tuple[list[Item], Pairs]:
    """`root/<identity>/<image>` (CASIA-WebFace, LFW, AT&T/ORL): the folder name is the label."""
    _require_dir(root)
    items = []
    for ident in sorted(os.listdir(root)):
        folder = os.path.join(root, ident)
        if ident.startswith(".") or not os.path.isdir(folder):
            continue
        for name in sorted(filter(_is_image, os.listdir(folder))):
            items.append(Item(source=f"{ident}/{name}", label=ident, load=_loader(os.path.join(folder, name))))
    if not items:
        raise DataError(f"{root}: no images ({', '.join(IMAGE_EXTENSIONS)}) in per-identity subfolders")
    return items, []


def read_pairs_file(path: str, sources: set[str]) -> Pairs:
    """Verification pairs, in LFW's pairs.txt format or the simple `img1 img2 1|0` one.

    LFW: an optional count header ("10 300" or "6000"), then `name n1 n2` (same person) and
    `name1 n1 name2 n2` (different), meaning `name/name_0001.jpg`. Every image must be in `sources`.
    """
    def lfw(name: str, number: str) -> str:
        return f"{name}/{name}_{int(number):04d}.jpg"

    pairs = []
    for i, (n, t) in enumerate(_read_lines(path)):
        if i == 0 and 1 <= len(t) <= 2 and all(x.isdigit() for x in t):
            continue  # LFW header
        if len(t) == 3 and t[1].isdigit() and t[2].isdigit():
            pair = (lfw(t[0], t[1]), lfw(t[0], t[2]), 1)
        elif len(t) == 4 and t[1].isdigit() and t[3].isdigit():
            pair = (lfw(t[0], t[1]), lfw(t[2], t[3]), 0)
        elif len(t) == 3 and t[2] in ("0", "1"):
            pair = (t[0], t[1], int(t[2]))
        else:
            raise DataError(f"{path}:{n}: expected 'name n1 n2', 'name1 n1 name2 n2' or 'img1 img2 0|1', "
                            f"got {' '.join(t)!r}")
        for src in pair[:2]:
            if src not in sources:
                raise DataError(f"{path}:{n}: image {src} is not in the data set")
        pairs.append(pair)
    return pairs


def lfw_pairs(pairs_txt: str, root: str) -> tuple[list[Item], Pairs]:
    """LFW (or any per-identity folder set) with its verification pairs."""
    items, _ = folder_per_identity(root)
    return items, read_pairs_file(pairs_txt, {it.source for it in items})


def _celeba_annotation(root: str, name: str) -> Optional[str]:
    """CelebA ships its annotation files in `Anno/`; copies often put them next to the images."""
    for path in (os.path.join(root, name), os.path.join(root, "Anno", name)):
        if os.path.isfile(path):
            return path
    return None


def celeba(root: str) -> tuple[list[Item], Pairs]:
    """CelebA: images in `img_align_celeba/`, `Celeb/` or root itself; optional `identity_CelebA.txt`,
    `list_landmarks_align_celeba.txt` (interleaved x, y per point) and `pairs.txt` (`img1 img2 0|1`).

    Only images on disk are itemised, so a subset folder works with the full annotation files. With an
    identity file, every image on disk must be in it; without one, all images get the label "unknown".
    """
    _require_dir(root)
    image_dir = next((d for d in (os.path.join(root, "img_align_celeba"), os.path.join(root, "Celeb"))
                      if os.path.isdir(d)), root)
    names = sorted(filter(_is_image, os.listdir(image_dir)))
    if not names:
        raise DataError(f"{root}: no images in img_align_celeba/, Celeb/ or the folder itself")
    on_disk = set(names)

    labels: dict = {}
    id_file = _celeba_annotation(root, "identity_CelebA.txt")
    if id_file:
        for n, t in _read_lines(id_file):
            if len(t) != 2 or not t[1].isdigit():
                raise DataError(f"{id_file}:{n}: expected 'image identity_number', got {' '.join(t)!r}")
            labels[t[0]] = int(t[1])
        unlisted = [name for name in names if name not in labels]
        if unlisted:
            raise DataError(f"{id_file}: no identity for {len(unlisted)} image(s) in {image_dir}, e.g. {unlisted[0]}")

    landmarks: dict = {}
    origins: dict = {}
    lm_file = _celeba_annotation(root, "list_landmarks_align_celeba.txt")
    if lm_file:
        lines = _read_lines(lm_file)
        if not lines or len(lines[0][1]) != 1 or not lines[0][1][0].isdigit():
            raise DataError(f"{lm_file}:1: expected the image count on the first line")
        for n, t in lines[2:]:  # line 2 holds the column names
            if len(t) != 1 + 2 * NUM_LANDMARKS:
                raise DataError(f"{lm_file}:{n}: expected an image and {2 * NUM_LANDMARKS} coordinates, "
                                f"got {len(t)} fields")
            if t[0] in on_disk:
                landmarks[t[0]] = _floats(lm_file, n, t[1:], "coordinates").reshape(NUM_LANDMARKS, 2)
                origins[t[0]] = f"{lm_file}:{n}"

    items = [Item(source=name, label=labels.get(name, UNKNOWN), load=_loader(os.path.join(image_dir, name)),
                  landmarks=landmarks.get(name), origin=origins.get(name, "")) for name in names]
    pairs_file = os.path.join(root, "pairs.txt")
    pairs = read_pairs_file(pairs_file, on_disk) if os.path.isfile(pairs_file) else []
    return items, pairs


def mtfl(list_file: str, root: Optional[str] = None) -> tuple[list[Item], Pairs]:
    """MTFL / CUHK facial-point lists: `path x1..x5 y1..y5 [attributes]`, all x first, then all y.

    Alignment data has no identities, so every item is labelled "unknown". Paths are relative to `root`
    (default: the list file's folder); Windows separators in the original lists are accepted.
    """
    lines = _read_lines(list_file)
    root = os.path.dirname(os.path.abspath(list_file)) if root is None else root
    _require_dir(root)
    items, seen = [], set()
    for n, t in lines:
        if len(t) < 1 + 2 * NUM_LANDMARKS:
            raise DataError(f"{list_file}:{n}: expected a path and {2 * NUM_LANDMARKS} coordinates "
                            f"(x1..x5 y1..y5), got {len(t)} fields")
        source = t[0].replace("\\", "/")
        path = os.path.join(root, source)
        if source in seen:
            raise DataError(f"{list_file}:{n}: {source} is listed twice")
        if not os.path.isfile(path):
            raise DataError(f"{list_file}:{n}: image {path} does not exist")
        xy = _floats(list_file, n, t[1:1 + 2 * NUM_LANDMARKS], "coordinates").reshape(2, NUM_LANDMARKS).T
        seen.add(source)
        items.append(Item(source=source, label=UNKNOWN, load=_loader(path), landmarks=np.ascontiguousarray(xy),
                          origin=f"{list_file}:{n}"))
    if not items:
        raise DataError(f"{list_file}: lists no images")
    return items, []


def subset(items: list[Item], n: int, seed: int = 0, skip: int = 0) -> list[Item]:
    """A deterministic random `n` of the items (ranked by a hash of each source and the seed; order kept),
    for runs that must be small: tests, and tables that must finish in an hour on 2 cores. `skip` leaves
    out the first `skip` of that ranking: `skip=N` gives images disjoint from the subset of `n=N`."""
    key = lambda it: hashlib.sha1(f"{seed}:subset:{it.source}".encode()).digest()  # noqa: E731
    keep = {id(it) for it in sorted(items, key=key)[skip:skip + n]}
    return [it for it in items if id(it) in keep]


DEFAULT_CROP_MARGIN = 0.5  # of the landmarks' box side, on each side: the crop is 2× the box


def face_crop_box(landmarks: np.ndarray, margin: float = DEFAULT_CROP_MARGIN) -> tuple[float, float, float]:
    """The square face crop (x0, y0, side) around 5 landmarks: their bounding box's longer side grown by
    `margin` of it on every side, centred on the box.

    Five points span eyes to mouth only; margin 0.5 (a crop twice the box) takes in the brow, cheeks and
    chin, which is about what a face detector's box holds.
    """
    lo, hi = landmarks.min(axis=0), landmarks.max(axis=0)
    side = float(max(hi - lo)) * (1 + 2 * margin)
    cx, cy = (lo + hi) / 2
    return float(cx - side / 2), float(cy - side / 2), side


def _crop_load(load, box: tuple[float, float, float], size: int, source: str):
    def read() -> bytes:
        from PIL import Image

        rgb = _pil_rgb(io.BytesIO(load()), source)
        x0, y0, side = box
        # Pixels outside the photo repeat its edge (as the CelebA crops of ../shared were made), so a face
        # near the border keeps its place in the crop.
        pad = int(np.ceil(max(0.0, -x0, -y0, x0 + side - rgb.width, y0 + side - rgb.height))) + 1
        arr = np.pad(np.asarray(rgb), ((pad, pad), (pad, pad), (0, 0)), mode="edge")
        img = Image.fromarray(arr).resize((size, size), Image.BILINEAR,
                                          box=(x0 + pad, y0 + pad, x0 + pad + side, y0 + pad + side))
        return tf.io.encode_png(np.asarray(img)).numpy()
    return read


def face_crops(items: list[Item], margin: float = DEFAULT_CROP_MARGIN, size: int = 64) -> list[Item]:
    """Each item as a `size`×`size` square crop around its landmarks (`face_crop_box`), landmarks moved
    into the crop. For whole photos with small faces (MTFL: faces of 25-35 px in 80 px images)."""
    out = []
    for it in items:
        if it.landmarks is None:
            raise DataError(f"{it.origin or it.source}: no landmarks to crop the face from (--face_crop needs "
                            "landmarks for every image)")
        box = face_crop_box(it.landmarks, margin)
        if box[2] < 2:
            raise DataError(f"{it.origin or it.source}: its landmarks span {box[2]:.2g} px; no face to crop")
        out.append(_cropped(it, box, size))
    return out


def detector_crops(items: list[Item], margin: float = DEFAULT_CROP_MARGIN, size: int = 64,
                   fallback: str = "jitter", detector=None):
    """(items, report): each item as a `size`×`size` crop around the face a detector finds, not around its
    landmarks (`face_detect`), so that no image's crop knows where its landmarks are; the images it misses
    take the fallback (jittered landmark crop, or dropped). Landmarks, when there are any, move into the crop."""
    from keras_kd.data import face_detect

    boxes, report = face_detect.detector_boxes(items, margin, fallback, detector)
    return [_cropped(it, box, size) for it, box in zip(items, boxes) if box is not None], report


def aligned_faces(items: list[Item], size: int, aligner=None) -> list[Item]:
    """Each item as its face aligned on 5 points, a `size`×`size` chip (`face_align.Aligner`), read lazily.

    Items with landmarks are refused: the chip's warp would have to move them too.
    """
    for it in items:
        if it.landmarks is not None:
            raise DataError(f"{it.origin or it.source}: has landmarks, which --face_align does not move "
                            "(use --face_crop for landmark sets)")
    if aligner is None:
        from keras_kd.data import face_align

        aligner = face_align.Aligner(size)
    return [dataclasses.replace(it, load=_aligned_load(it.load, aligner, it.source)) for it in items]


def _aligned_load(load, aligner, source: str):
    def read() -> bytes:
        return tf.io.encode_png(aligner(np.asarray(_pil_rgb(io.BytesIO(load()), source)))).numpy()
    return read


def _cropped(it: Item, box: tuple[float, float, float], size: int) -> Item:
    """The item as the `size`×`size` crop of `box` (x0, y0, side), its landmarks moved with it."""
    moved = None
    if it.landmarks is not None:
        moved = ((it.landmarks - np.array(box[:2], np.float32)) * (size / box[2])).astype(np.float32)
    return dataclasses.replace(it, load=_crop_load(it.load, box, size, it.source), landmarks=moved)
