#!/usr/bin/env bash
# Bring your own teacher on real faces (docs/results.md, "Bring your own teacher"): the CelebA subset of
# ../shared split by identity (the test people never seen in training), each face aligned on its 5 points
# (--face_align), dlib's face descriptor as the teacher through a file of its outputs, /8 students with and
# without it over 3 seeds. Needs pip install -r requirements-teachers.txt; about 30 min on 2 CPU cores.
# Extra arguments go to main.py (e.g. --student_arch=resnet50,mobilefacenet, --seeds=0).
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SHARED:-../shared/data}
DATA=${DATA:-data/real/celeba_id_aligned}
[ -f "$DATA/meta.json" ] || python -m keras_kd.data.convert --layout=celeba --src="$SHARED/celeba_id_subset_144" \
  --out="$DATA" --split_by=identity --face_align --face_crop_size=144
[ -f "$DATA/teacher_outputs/dlib.npz" ] || python -m keras_kd.teachers.dlib "$DATA"
python main.py --task=verify --data="$DATA" --teacher_outputs="$DATA/teacher_outputs/dlib.npz" --image_size=64 \
  --students=8 --verify_softmax=on --student_epochs=10 --transfer_epochs=10 --pretrain_epochs=20 \
  --pretrain_transfer_epochs=0 --cls_inits=label --kd=emb_cos --ab_grid=0:0 --methods=emb_cos --seeds=0,1,2 \
  --model_dir="${MODEL_DIR:-runs/byot}" "$@"
