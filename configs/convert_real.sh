#!/usr/bin/env bash
# Converts the two real face sets of ../shared/data (see their README files) into data/real/ with the
# project's own converters; every configs/table*.cfg reads these. Idempotent: a set already converted is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SHARED:-../shared/data}
convert() { local out=$1; shift; [ -f "$out/meta.json" ] || python -m keras_kd.data.convert --out="$out" "$@"; }
# CelebA identity subset: 3,409 face crops (144 px) of 237 identities, 80/20 split by image (closed set, as
# the paper's), its pairs.txt kept where both images fall in the test split.
convert data/real/celeba --layout=celeba --src="$SHARED/celeba_id_subset_144"
# MTFL: 7,650 whole 80 px photos with small faces; 4,000 of them (a fixed random subset, for time), each
# stored as a 64 px square face crop around its 5 landmarks (margin 0.5 of their box on each side).
convert data/real/mtfl_crop --layout=mtfl --src="$SHARED/mtfl_80x80/new_training.txt" \
  --face_crop --face_crop_margin=0.5 --face_crop_size=64 --max_images=4000
# The other 3,650 MTFL images, disjoint from the 4,000 above, all as test data: a new test set for
# `python main.py --flagfile=configs/table3_align.cfg --mode=evaluate --eval_data=data/real/mtfl_rest`.
convert data/real/mtfl_rest --layout=mtfl --src="$SHARED/mtfl_80x80/new_training.txt" \
  --face_crop --face_crop_margin=0.5 --face_crop_size=64 --skip_images=4000 --all_test
