#!/usr/bin/env bash
# Every table of docs/results.md, in order (later tables reuse earlier stages), each timed.
set -euo pipefail
cd "$(dirname "$0")/.."
./configs/convert_real.sh
mkdir -p runs/real
for t in table2_classify table3_align table5_verify table1_classify table2_widths table4_verify; do
  start=$(date +%s)
  python main.py --flagfile=configs/$t.cfg > runs/real/$t.log 2>&1
  echo "$t: $(( $(date +%s) - start )) s" | tee -a runs/real/times.txt
done
