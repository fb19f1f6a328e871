#!/usr/bin/env bash
# Reproduce the reference study's LLaVA-1.5-7B figures with its own protocol
# (benchmark=cai2025_official) and print ours beside the published ones, each with its source
# and the tolerance expected (mibench.study_report says why).
#
#   scripts/reproduce_cai2025.sh [--out DIR] [--dry-run] [-- MIBENCH OVERRIDES...]
#
# A real run needs a GPU (about 15 GB in fp16) and access to the Hugging Face hub
# (llava-hf/llava-1.5-7b-hf and the study's data release) and to raw.githubusercontent.com
# (the study's code at the pinned commit, for its system prompt and unrelated sentences), or
# local copies: `-- data_root=DIR` with DIR/study_data holding the study's data tree or its
# archives, and MIBENCH_STUDY_CODE=<a clone of luisrui/Modality-Interference-in-MLLMs checked
# out at the pinned commit>. fp16 and a batch of 4, as the study ran it.
#
# --dry-run: the same pipeline offline on CPU, with the embedded toy model on fixture files
# written in the release's formats (scripts/study_fixtures.py); its comparison only shows the
# output, the toy is not LLaVA.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out=""
dry=0
extra=()
while (( $# )); do
  case "$1" in
    --dry-run) dry=1 ;;
    --out) out="$2"; shift ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

status=0
if (( dry )); then
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  out="${out:-$work/run}"
  python "$here/study_fixtures.py" "$work" --items 8
  export MIBENCH_STUDY_CODE="$work/study_code" HF_HUB_OFFLINE=1
  mibench benchmark=cai2025_official model=toy_llava data_root="$work" \
    grid.study_release.verify=false +model.unknown_words_refuse=1 out_dir="$out" \
    progress=false batch_size=8 "${extra[@]}" || status=$?
  echo
  echo "dry run: the toy model on fixtures (not LLaVA); the comparison below shows the format"
else
  out="${out:-runs/cai2025_official-llava_1_5_7b}"
  mibench benchmark=cai2025_official model=llava_1_5_7b model.dtype=float16 \
    out_dir="$out" batch_size=4 "${extra[@]}" || status=$?
fi
echo
python -m mibench.study_report "$out" --model LLaVA-1.5-7B
exit "$status"
