#!/usr/bin/env bash
# Validation of a model (and its regression twin) on the wallpaper validation split, beside the baselines a
# user already has: the degraded input itself, OpenCV Telea and Navier-Stokes inpainting, OpenCV NL-means.
#   scripts/validate.sh DIFFUSION_CHECKPOINT REGRESSION_CHECKPOINT|- [OUT_DIR] [VAL_LIST]
# Evaluation sets: colorization, inpainting with free_form_20_30 and centre masks, uncropping of the right
# half, JPEG at quality 10 and 20. Writes OUT_DIR/<set>/{set,palette,regression,<method>}, one JSON per row
# (model or baseline) and set, and OUT_DIR/report.md with one table per set.
# SEEDS="0 1 2" samples every model once per seed (rows palette, palette_seed1, palette_seed2): a bar within a few
# percent is judged over several seeds, as 16 images leave the first sample's scores noisy. Default: "0".
# SETS="colorization jpeg_q20" runs only those sets (default: all six), e.g. after a change to one task's sampling.
# DEGRADE_SEED=2 draws other free-form masks than the default 1, on which the sampling defaults were chosen: holes
# that no choice has seen (the other five sets are fixed by their options and do not depend on it).
set -euo pipefail
diffusion=$1
regression=$2  # "-": no regression twin
out=${3:-eval/validation}
val=${4:-data/wallpapers/val.txt}
size=64
palette=${PALETTE:-palette}
read -r -a seeds <<< "${SEEDS:-0}"
only=" ${SETS:-} "
degrade_seed=${DEGRADE_SEED:-1}

# The validation images as one flat folder (fixed centre crops are taken by `palette degrade --size`).
mkdir -p "$out/clean"
while read -r line; do
  [ -n "$line" ] && cp "$(dirname "$val")/$line" "$out/clean/"
done < "$val"

models=(palette)
[ "$regression" != - ] && models+=(regression)

results=()
evaluate() {  # evaluate SET_NAME PREDICTIONS MODEL: one row of the report (the baselines get their own below)
  local data=$out/$1/set
  "$palette" evaluate --pred "$2" --target "$data/targets" --input "$data/inputs" --model "$3" --task "$1" \
    --no-baselines --out "$out/$1/$3.json" > /dev/null
  results+=("$out/$1/$3.json")
}

# set name, task, degrade options
for spec in "colorization colorization" \
            "inpainting_free_form_20_30 inpainting --mask-kind free_form_20_30" \
            "inpainting_centre inpainting --mask-kind centre" \
            "uncropping_right uncropping --mask-kind right" \
            "jpeg_q10 jpeg --quality 10" \
            "jpeg_q20 jpeg --quality 20"; do
  read -r name task options <<< "$spec"
  [ "$only" != "  " ] && [[ $only != *" $name "* ]] && continue
  data=$out/$name/set
  # shellcheck disable=SC2086  # options are flag and value, split on purpose
  "$palette" degrade --task "$task" --input "$out/clean" --output "$data" --size "$size" --seed "$degrade_seed" $options
  masks=()
  [ -d "$data/masks" ] && masks=(--mask "$data/masks")
  for model in "${models[@]}"; do
    checkpoint=$diffusion
    [ "$model" = regression ] && checkpoint=$regression
    for seed in "${seeds[@]}"; do
      row=$model
      [ "$seed" != "${seeds[0]}" ] && row=${model}_seed$seed
      "$palette" sample --checkpoint "$checkpoint" --task "$task" --input "$data/inputs" "${masks[@]}" \
        --output "$out/$name/$row" --num-samples 2 --seed "$seed" --device cpu --batch-size 32
      evaluate "$name" "$out/$name/$row" "$row"
    done
  done
  # The degraded input itself (gray, mid-gray hole, decoded JPEG): a floor every model must beat.
  evaluate "$name" "$data/inputs" input
  case $task in  # palette.baselines.BASELINES
    inpainting | uncropping) methods=(telea navier_stokes) ;;
    jpeg) methods=(nlmeans) ;;
    *) methods=() ;;
  esac
  for method in "${methods[@]}"; do
    "$palette" baseline --task "$task" --method "$method" --input "$data/inputs" "${masks[@]}" \
      --output "$out/$name/$method" > /dev/null
    evaluate "$name" "$out/$name/$method" "$method"
  done
done
"$palette" report "${results[@]}" --out "$out/report.md"
