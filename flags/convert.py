"""Flags of `python -m keras_kd.data.convert`: definitions and validation, so bad values fail before any work."""
from __future__ import annotations

from absl import flags

FLAGS = flags.FLAGS
LAYOUTS = ("synthetic", "folders", "lfw", "celeba", "mtfl")

flags.DEFINE_enum("layout", None, LAYOUTS, "How --src is laid out: synthetic (generated, no --src), "
                  "folders (SRC/<identity>/<images>), lfw (folders plus --pairs), celeba (CelebA folder), "
                  "mtfl (an MTFL/CUHK landmark list file).")
flags.DEFINE_string("src", None, "Folder (folders, lfw, celeba) or list file (mtfl) to convert.")
flags.DEFINE_string("pairs", None, "lfw: pairs.txt (LFW format, or 'img1 img2 0|1' lines).")
flags.DEFINE_string("out", None, "Output directory of the TFRecords and meta.json.")
flags.DEFINE_enum("split_by", "image", ["image", "identity"], "Test split of whole images (closed set) or "
                  "of whole identities (open set).")
flags.DEFINE_float("test_fraction", 0.2, "Fraction of images (or identities) in the test split.",
                   lower_bound=0.0, upper_bound=1.0)
flags.DEFINE_bool("all_test", False, "Write everything to the test split (an evaluation-only set such as LFW).")
flags.DEFINE_integer("seed", 0, "Seed of the split (and of the synthetic faces).", lower_bound=0)
flags.DEFINE_integer("records_per_shard", 2000, "Records per TFRecord file.", lower_bound=1)
flags.DEFINE_integer("max_images", 0, "Convert a deterministic random subset of this many images (0: all), "
                     "chosen by --seed: for small tests and runs that must be short.", lower_bound=0)
flags.DEFINE_integer("skip_images", 0, "With --max_images: leave out the first N of the subset's ranking, so "
                     "--skip_images=N gives images disjoint from --max_images=N (a new test set).", lower_bound=0)
flags.DEFINE_bool("face_crop", False, "Store a square crop around each image's 5 landmarks (their box grown by "
                  "--face_crop_margin on each side) instead of the whole photo; landmarks move with it. For "
                  "whole photos with small faces (MTFL).")
flags.DEFINE_enum("face_crop_box", "landmarks", ["landmarks", "detector"], "--face_crop: the box the crop is "
                  "cut around: landmarks (each image's own 5 landmarks, test images too: the crop tells the model "
                  "where the face is) or detector (OpenCV's Haar face detector, as a deployed model would get; "
                  "requirements-detector.txt; images it misses take --detector_fallback).")
flags.DEFINE_enum("detector_fallback", "jitter", ["jitter", "drop"], "--face_crop_box=detector, images where it "
                  "finds no face (or a face whose crop misses a landmark): jitter (the landmark crop, moved and "
                  "scaled by the spread measured between detector and landmark crops) or drop (left out, counted).")
flags.DEFINE_float("face_crop_margin", 0.5, "--face_crop: margin on each side, as a fraction of the landmarks' "
                   "box (0.5: a crop twice the box).", lower_bound=0.0)
flags.DEFINE_bool("face_align", False, "Store each image as its face aligned on 5 points (dlib's shape predictor "
                  "on the image's middle two thirds, then get_face_chip: keras_kd/data/face_align.py), the input "
                  "face recognisers expect. For identity sets of face crops (celeba, folders, lfw); needs "
                  "requirements-teachers.txt.")
flags.DEFINE_integer("face_crop_size", 64, "--face_crop, --face_align: side of the stored image in pixels.",
                     lower_bound=16)
flags.DEFINE_integer("num_identities", 40, "synthetic: identities.", lower_bound=1)
flags.DEFINE_integer("images_per_identity", 50, "synthetic: images per identity.", lower_bound=1)
flags.DEFINE_integer("image_size", 72, "synthetic: image side in pixels.", lower_bound=16)

flags.mark_flags_as_required(["layout", "out"])


@flags.multi_flags_validator(["layout", "src"], message="--src is required unless --layout=synthetic")
def _src_given(v: dict) -> bool:
    return v["layout"] == "synthetic" or bool(v["src"])


@flags.multi_flags_validator(["face_crop", "face_crop_box"], message="--face_crop_box=detector goes with "
                             "--face_crop (it says which box the face crop is cut around)")
def _box_for_crop(v: dict) -> bool:
    return v["face_crop"] or v["face_crop_box"] == "landmarks"


@flags.multi_flags_validator(["face_crop", "face_align"],
                             message="--face_crop and --face_align are two ways to cut the face: give one")
def _one_face_cut(v: dict) -> bool:
    return not (v["face_crop"] and v["face_align"])


@flags.multi_flags_validator(["layout", "pairs"], message="--pairs is required by --layout=lfw and used only by it")
def _pairs_for_lfw(v: dict) -> bool:
    return (v["layout"] == "lfw") == bool(v["pairs"])
