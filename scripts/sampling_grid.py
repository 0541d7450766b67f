"""Sampling options of one model on the 64 validation crops: PSNR / SWD (colourfulness ÷ target) per set.

    python scripts/sampling_grid.py src/palette/assets/palette-multitask-64.safetensors --sets colorization \
        --option guidance=1 --option guidance=1.5 --option guidance=2.5
    python scripts/sampling_grid.py MODEL --sets inpainting_free_form_20_30,inpainting_centre \
        --option steps=2,strength=1 --option steps=20,strength=0.2

Each --option is a row: `restore` keyword arguments (steps, guidance, strength, sampler); what it leaves out is the
model's default for the task. The crops, degradations and scores are those of scripts/sweep.py (the centre and
three random crops of each validation image, degraded with fixed seeds), so rows are comparable across models and
sessions; the first row is the estimate each restoration starts from. Prints one markdown table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sweep import SETS, degraded_sets, scores, validation_crops

from palette.inference import load_model, restore

KINDS = {"steps": int, "guidance": float, "strength": float, "sampler": str}


def parse_option(text: str) -> dict:
    """"steps=20,strength=0.2" -> {"steps": 20, "strength": 0.2}; a key outside KINDS is an error naming it."""
    option = {}
    for pair in filter(None, text.split(",")):
        key, _, value = pair.partition("=")
        if key not in KINDS or not value:
            raise SystemExit(f"--option {text!r}: expected KEY=VALUE pairs with KEY one of {', '.join(KINDS)}")
        option[key] = KINDS[key](value)
    return option


def cell(row: dict[str, float], colour: bool) -> str:
    return f"{row['psnr']:.2f} / {row['swd']:.1f}" + (f" ({100 * row['colour']:.0f}%)" if colour else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--sets", default=",".join(SETS), help=f"comma-separated subset of {', '.join(SETS)}")
    parser.add_argument("--option", action="append", default=[], help="one row of restore options, e.g. steps=2")
    parser.add_argument("--val", type=Path, default=Path("data/wallpapers/val.txt"))
    args = parser.parse_args()
    names = args.sets.split(",")
    if unknown := [name for name in names if name not in SETS]:
        raise SystemExit(f"--sets: unknown {', '.join(unknown)}; expected some of {', '.join(SETS)}")
    options = [parse_option(text) for text in args.option] or [{}]
    model = load_model(args.checkpoint, "cpu")
    clean = validation_crops(args.val)
    sets = degraded_sets(clean)
    print("| option | " + " | ".join(names) + " |\n|---|" + "---|" * len(names))
    print("| the estimate | " + " | ".join(cell(sets[name].estimate, name == "colorization") for name in names) + " |")
    for option in options:
        cells = [cell(scores(restore(model, sets[name].condition, sets[name].mask, task=sets[name].task, seed=0,
                                     **option), clean), name == "colorization") for name in names]
        label = ", ".join(f"{key} {value}" for key, value in option.items()) or "the model's defaults"
        print(f"| {label} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
