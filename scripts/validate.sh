#!/usr/bin/env bash
# Validation of a model and its regression twin on the wallpaper validation split, all four tasks.
#   scripts/validate.sh DIFFUSION_CHECKPOINT REGRESSION_CHECKPOINT [OUT_DIR] [VAL_LIST]
# Writes OUT_DIR/<task>/{set,palette,regression}, one JSON per model and task, and OUT_DIR/report.md.
set -euo pipefail
diffusion=$1
regression=$2
out=${3:-eval/validation}
val=${4:-data/wallpapers/val.txt}
size=64
palette=${PALETTE:-palette}

# The validation images as one flat folder (fixed centre crops are taken by `palette degrade --size`).
mkdir -p "$out/clean"
while read -r line; do
  [ -n "$line" ] && cp "$(dirname "$val")/$line" "$out/clean/"
done < "$val"

results=()
for task in colorization inpainting uncropping jpeg; do
  options=()
  [ "$task" = inpainting ] && options=(--mask-kind free_form_20_30)
  "$palette" degrade --task "$task" --input "$out/clean" --output "$out/$task/set" --size "$size" --seed 1 "${options[@]}"
  masks=()
  [ -d "$out/$task/set/masks" ] && masks=(--mask "$out/$task/set/masks")
  for model in palette regression; do
    checkpoint=$diffusion
    [ "$model" = regression ] && checkpoint=$regression
    "$palette" sample --checkpoint "$checkpoint" --task "$task" --input "$out/$task/set/inputs" "${masks[@]}" \
      --output "$out/$task/$model" --num-samples 2 --seed 0 --device cpu --batch-size 32
    "$palette" evaluate --pred "$out/$task/$model" --target "$out/$task/set/targets" --input "$out/$task/set/inputs" \
      --model "$model" --task "$task" --out "$out/$task/$model.json" > /dev/null
    results+=("$out/$task/$model.json")
  done
  if [ "$task" = colorization ] || [ "$task" = jpeg ]; then
    # The degraded input itself, as a floor every model must beat.
    "$palette" evaluate --pred "$out/$task/set/inputs" --target "$out/$task/set/targets" \
      --model "degraded input" --task "$task" --out "$out/$task/input.json" > /dev/null
    results+=("$out/$task/input.json")
  fi
done
"$palette" report "${results[@]}" --out "$out/report.md"
