"""Face boxes that do not come from the landmarks: OpenCV's Haar cascade, for `convert --face_crop_box=detector`.

A crop cut around an image's own ground-truth landmarks (`layouts.face_crop_box`) tells the model where the
face is and how large, test images included; a deployed model gets a face detector's box instead. This
module finds that box with the frontal-face Haar cascade shipped in `opencv-python-headless`
(`haarcascade_frontalface_alt2`, the cascade that made the CelebA crops of ../shared) and maps it to a crop
of the same framing, on average, as the landmark crop, so that the two protocols differ in what each image's
box knows, not in zoom.

Where the cascade finds no face, or finds one whose crop would not hold the five landmarks (a wrong face),
the image takes the fallback: `jitter` (the landmark crop moved and scaled at random by the spread measured
between detector and landmark crops on the images where the cascade did find the face; seeded by the file
name) or `drop` (left out, and counted). Both are reported by the converter and kept in meta.json.
"""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

CASCADE = "haarcascade_frontalface_alt2.xml"
SCALE_FACTOR, MIN_NEIGHBORS = 1.1, 4      # as the CelebA crops of ../shared were made
UPSCALE_TO = 160                          # images whose shorter side is smaller are enlarged first: MTFL's
                                          # 25-35 px faces are near the cascade's 20 px window (measured on 1,500
                                          # MTFL images, minNeighbors 3: 93.7 % found as they are, 97.6 % at ×2)
MIN_FACE = 0.12                           # of the (enlarged) shorter side, and at least the 20 px window
# The cascade's square box against the landmarks' bounding box, measured (median over images) on 1,500 MTFL
# images it found a face in: its side is BOX_RATIO × the landmark box's longer side, its centre CENTRE_DY of
# its side above the landmark box's centre (it holds the forehead; the landmarks stop at the mouth). The
# detector crop is the box shrunk by BOX_RATIO, moved down by CENTRE_DY, then grown by the margin as the
# landmark crop is: on average the two frame a face alike. Checked on all 7,650 MTFL training images (7,447
# found): median log side ratio of the two crops 0.001, centre offsets 0.015 (x) and 0.002 (y) landmark-box sides.
BOX_RATIO = 2.30
CENTRE_DY = 0.079
# The spread of the detector crop around the landmark crop on those 7,447 images (standard deviations: the
# log of the side ratio; the centre offsets in units of the landmark box's side): what `jitter` draws from.
JITTER_LOG_SIDE = 0.096
JITTER_DX, JITTER_DY = 0.047, 0.060
FALLBACKS = ("jitter", "drop")


class DetectorUnavailable(RuntimeError):
    """OpenCV (with its Haar cascades) is not installed; the message says what to install."""


def _cv2():
    try:
        import cv2
    except ImportError:
        raise DetectorUnavailable("--face_crop_box=detector needs OpenCV's Haar cascades: "
                                  "pip install -r requirements-detector.txt (opencv-python-headless<5)") from None
    if not hasattr(cv2, "CascadeClassifier") or not hasattr(cv2, "data"):
        raise DetectorUnavailable(f"--face_crop_box=detector: OpenCV {cv2.__version__} has no Haar cascades "
                                  "(OpenCV 5 moved them out); pip install -r requirements-detector.txt "
                                  "(opencv-python-headless<5)")
    return cv2


def available() -> bool:
    try:
        _cv2()
        return True
    except DetectorUnavailable:
        return False


class HaarDetector:
    """The largest frontal face of an image, as (x, y, side) in its pixels, or None."""

    def __init__(self):
        cv2 = _cv2()
        self.cv2 = cv2
        self.cascade = cv2.CascadeClassifier(cv2.data.haarcascades + CASCADE)
        if self.cascade.empty():
            raise DetectorUnavailable(f"{cv2.data.haarcascades + CASCADE}: OpenCV cannot load this cascade")
        self.name = f"OpenCV {cv2.__version__} {CASCADE} (scaleFactor {SCALE_FACTOR}, minNeighbors " \
                    f"{MIN_NEIGHBORS}, shorter side enlarged to ≥ {UPSCALE_TO} px)"

    def __call__(self, encoded: bytes) -> Optional[Tuple[float, float, float]]:
        cv2 = self.cv2
        gray = cv2.imdecode(np.frombuffer(encoded, np.uint8), cv2.IMREAD_GRAYSCALE)
        if gray is None:
            return None
        up = max(1.0, UPSCALE_TO / min(gray.shape))
        if up > 1:
            gray = cv2.resize(gray, None, fx=up, fy=up, interpolation=cv2.INTER_LINEAR)
        gray = cv2.equalizeHist(gray)
        least = max(20, int(MIN_FACE * min(gray.shape)))
        faces = self.cascade.detectMultiScale(gray, scaleFactor=SCALE_FACTOR, minNeighbors=MIN_NEIGHBORS,
                                              minSize=(least, least))
        if len(faces) == 0:
            return None
        x, y, w, h = max(faces, key=lambda f: int(f[2]) * int(f[3]))
        return float(x) / up, float(y) / up, float(max(w, h)) / up


def crop_from_box(box: Tuple[float, float, float], margin: float) -> Tuple[float, float, float]:
    """The square crop (x0, y0, side) a detector box (x, y, side) gives: framed as the landmark crop of
    `margin` frames the landmarks, on average (BOX_RATIO, CENTRE_DY)."""
    x, y, w = box
    side = w / BOX_RATIO * (1 + 2 * margin)
    cx, cy = x + w / 2, y + w / 2 + CENTRE_DY * w
    return cx - side / 2, cy - side / 2, side


def jittered_crop(landmarks: np.ndarray, margin: float, source: str) -> Tuple[float, float, float]:
    """The landmark crop moved and scaled as a detector's crop differs from it (JITTER_*), seeded by the
    file name: the fallback for an image the detector misses."""
    lo, hi = landmarks.min(axis=0), landmarks.max(axis=0)
    span = float(max(hi - lo))
    rng = np.random.default_rng(int.from_bytes(hashlib.sha1(f"jitter:{source}".encode()).digest()[:8], "big"))
    for _ in range(100):  # a draw whose crop would cut a landmark off is drawn again (a tail of ~1 in 1000)
        dx, dy, ds = rng.normal(size=3)
        side = span * (1 + 2 * margin) * float(np.exp(JITTER_LOG_SIDE * ds))
        cx, cy = (lo + hi) / 2 + np.array([JITTER_DX * dx, JITTER_DY * dy]) * span
        box = float(cx - side / 2), float(cy - side / 2), side
        if holds(box, landmarks):
            return box
    side, (cx, cy) = span * (1 + 2 * margin), (lo + hi) / 2  # (margin ~0: no draw holds them) the landmark crop
    return float(cx - side / 2), float(cy - side / 2), side


def holds(box: Tuple[float, float, float], landmarks: Optional[np.ndarray]) -> bool:
    """Whether a crop holds every landmark (a detection of the wrong face does not)."""
    if landmarks is None:
        return True
    x0, y0, side = box
    return bool(((landmarks >= [x0, y0]) & (landmarks <= [x0 + side, y0 + side])).all())


@dataclasses.dataclass
class Report:
    """What the detector did over a conversion: its hit rate and where its boxes lie."""

    detector: str
    fallback: str
    images: int = 0
    found: int = 0                        # a face whose crop holds the five landmarks (or no landmarks to check)
    missed: List[str] = dataclasses.field(default_factory=list)     # no face found
    wrong: List[str] = dataclasses.field(default_factory=list)      # a face whose crop misses a landmark
    dropped: List[str] = dataclasses.field(default_factory=list)
    ratios: List[Tuple[float, float, float]] = dataclasses.field(default_factory=list)  # log side, dx, dy

    @property
    def hit_rate(self) -> float:
        return self.found / self.images if self.images else 0.0

    def measured(self) -> Dict[str, float]:
        """On the hits with landmarks: detector crop vs landmark crop, as JITTER_* and BOX_RATIO state them."""
        if not self.ratios:
            return {}
        r = np.array(self.ratios)
        return {"median_log_side": float(np.median(r[:, 0])), "std_log_side": float(r[:, 0].std()),
                "median_dx": float(np.median(r[:, 1])), "std_dx": float(r[:, 1].std()),
                "median_dy": float(np.median(r[:, 2])), "std_dy": float(r[:, 2].std())}

    def meta(self) -> dict:
        return {"box": "detector", "detector": self.detector, "fallback": self.fallback, "images": self.images,
                "found": self.found, "hit_rate": round(self.hit_rate, 4), "missed": len(self.missed),
                "wrong_face": len(self.wrong), "dropped": len(self.dropped),
                "crop_vs_landmark_crop": {k: round(v, 4) for k, v in self.measured().items()}}

    def summary(self) -> str:
        fell = len(self.missed) + len(self.wrong)
        what = "dropped" if self.fallback == "drop" else "cropped around their landmarks with the measured jitter"
        return (f"detector found the face in {self.found} of {self.images} images "
                f"(hit rate {100 * self.hit_rate:.1f} %; "
                f"{len(self.missed)} without a face, {len(self.wrong)} with a face whose crop misses a landmark): "
                f"those {fell} {what}")


def detector_boxes(items, margin: float, fallback: str = "jitter",
                   detector: Optional[Callable[[bytes], Optional[tuple]]] = None) -> Tuple[list, Report]:
    """(crop box or None to drop, per item) and the Report. Items whose image does not load keep a box
    from the fallback, so that `write_dataset` counts them as undecodable, as it does every such file."""
    detector = detector or HaarDetector()
    report = Report(getattr(detector, "name", "a face detector"), fallback)
    boxes = []
    for it in items:
        report.images += 1
        try:
            found = detector(it.load())
        except OSError:
            found = None
        crop = crop_from_box(found, margin) if found is not None else None
        if crop is not None and holds(crop, it.landmarks):
            report.found += 1
            if it.landmarks is not None:
                report.ratios.append(_relation(crop, it.landmarks, margin))
            boxes.append(crop)
            continue
        (report.missed if crop is None else report.wrong).append(it.source)
        if fallback == "drop" or it.landmarks is None:
            report.dropped.append(it.source)
            boxes.append(None)
        else:
            boxes.append(jittered_crop(it.landmarks, margin, it.source))
    return boxes, report


def _relation(crop, landmarks: np.ndarray, margin: float) -> Tuple[float, float, float]:
    """(log side ratio, dx, dy) of a detector crop against the landmark crop, offsets in landmark-box sides."""
    lo, hi = landmarks.min(axis=0), landmarks.max(axis=0)
    span = float(max(hi - lo))
    x0, y0, side = crop
    centre = np.array([x0 + side / 2, y0 + side / 2]) - (lo + hi) / 2
    return float(np.log(side / (span * (1 + 2 * margin)))), float(centre[0] / span), float(centre[1] / span)
