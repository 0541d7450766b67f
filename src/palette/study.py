"""The paper's human evaluation: a rater sees a real photo and a model output and picks the one a camera took.

The fool rate is the share of answers that pick the model output (Saharia et al. 2022, §5.2, after SR3: pairs
shown for a fixed time, 50% means the rater cannot tell). Every answer is written to SQLite as it is given.

    palette study serve --real eval/targets --fake out/palette-64_inpainting --seconds 3 --db study.sqlite
    palette study report study.sqlite

A pair is a real photo and a model output with the same file stem. The model and task come from the --fake
folder's name (`palette-64_inpainting`, or `inpainting/` inside `palette-64/`) unless --model and --task say.
"""

from __future__ import annotations

import hashlib
import math
import re
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .imageio import ImageError, list_images, max_pixels, open_image
from .tasks import TASKS

Side = Literal["left", "right"]
SIDES: tuple[Side, Side] = ("left", "right")
Z_95 = 1.959963984540054  # the standard normal's 97.5% quantile: a two-sided 95% interval

SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    id INTEGER PRIMARY KEY,
    rater TEXT NOT NULL,
    pair TEXT NOT NULL,            -- the file stem shared by the photo and the model output
    real TEXT NOT NULL,            -- resolved paths (older versions stored them as typed)
    fake TEXT NOT NULL,
    model TEXT NOT NULL,
    task TEXT NOT NULL,
    fake_side TEXT NOT NULL CHECK (fake_side IN ('left', 'right')),
    choice TEXT NOT NULL CHECK (choice IN ('left', 'right')),   -- the side the rater took for the photo
    fooled INTEGER NOT NULL,       -- 1 when that was the model output
    seconds REAL NOT NULL,         -- from the pair appearing to the answer
    shown_seconds REAL NOT NULL,   -- how long the pair stayed on screen
    answered_at TEXT NOT NULL      -- UTC, ISO 8601
)
"""


@dataclass(frozen=True)
class Pair:
    """A real photo and a model output of the same picture."""

    name: str
    real: Path
    fake: Path
    model: str
    task: str


def model_and_task(fake_dir: str | Path) -> tuple[str, str]:
    """(model, task) from a folder name: `palette-64_inpainting`, or `inpainting` inside `palette-64/`."""
    fake_dir = Path(fake_dir).resolve()
    name, parent = fake_dir.name, fake_dir.parent.name
    tasks = sorted(TASKS, key=len, reverse=True)  # the longest name first, should one contain another
    for task in tasks:
        if task in name:
            return re.sub(r"^[-_. ]+|[-_. ]+$", "", name.replace(task, "", 1)) or parent, task
    for task in tasks:
        if task in parent:
            return name, task
    raise ValueError(f"{fake_dir}: no task name ({', '.join(TASKS)}) in the folder's name or its parent's; "
                     "pass --task (and --model)")


def _labels(fake_dir: str | Path, model: str | None, task: str | None) -> tuple[str, str]:
    """The flags where given, else what the folder's name says."""
    try:
        named_model, named_task = model_and_task(fake_dir)
    except ValueError:
        if task is None:
            raise
        named_model, named_task = Path(fake_dir).resolve().name, task
    return model or named_model, task or named_task


def find_pairs(real_dir: str | Path, fake_dirs: list[str | Path], model: str | None = None,
               task: str | None = None) -> list[Pair]:
    """Every model output with its real photo, matched by stem; an output without a photo is an error."""
    if (model or task) and len(fake_dirs) != 1:
        raise ValueError("--model and --task name one --fake folder; with several, name the folders instead")
    if task is not None and task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(TASKS)}")
    reals: dict[str, Path] = {}
    for path in list_images(real_dir):
        if (other := reals.setdefault(path.stem, path)) != path:
            raise ImageError(f"{other} and {path}: two real photos named {path.stem!r}, and model outputs are "
                             "matched to photos by name; rename or remove one")
    pairs = []
    for fake_dir in fake_dirs:
        pair_model, pair_task = _labels(fake_dir, model, task)
        fakes = list_images(fake_dir)
        missing = [path.name for path in fakes if path.stem not in reals]
        if missing:
            raise ImageError(f"{fake_dir}: no real photo in {real_dir} for {', '.join(missing[:5])}"
                             + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
        pairs += [Pair(path.stem, reals[path.stem], path, pair_model, pair_task) for path in fakes]
    if not pairs:
        raise ImageError(f"no model outputs in {', '.join(map(str, fake_dirs))}")
    return pairs


def trial_order(count: int, seed: int, rater: str) -> list[tuple[int, Side]]:
    """The pairs a rater sees, in order, each with the model output's side: seeded by (seed, rater)."""
    rater_word = int.from_bytes(hashlib.sha256(rater.encode()).digest()[:4], "little")
    rng = np.random.default_rng([seed, rater_word])
    order = rng.permutation(count)
    sides = rng.integers(0, 2, count)
    return [(int(index), SIDES[int(side)]) for index, side in zip(order, sides)]


def check_readable(pairs: list[Pair]) -> None:
    """An ImageError naming the first image of the pairs that cannot be shown, so that no rater meets it."""
    from PIL import Image

    limit = max_pixels()
    for path in dict.fromkeys(path for pair in pairs for path in (pair.real, pair.fake)):
        try:
            with Image.open(path) as image:
                image.verify()  # the header and (for PNG) the checksums: cheap, no pixels decoded
                fits = image.width * image.height <= limit
        except Exception:
            fits = False
        if not fits:
            open_image(path)  # the decode the page makes, which raises the ImageError that says what is wrong


class StudyDatabaseError(ValueError):
    """An answers database that cannot be opened, read or written; the message names the file."""


@contextmanager
def database(db: str | Path, read_only: bool = False) -> Iterator[sqlite3.Connection]:
    """The answers database as one transaction, closed after. Writable, it is created if new and every commit
    reaches the disk before it returns; read-only, it must be a study already, and nothing in the file changes."""
    path = Path(db)
    if path.is_dir():
        raise StudyDatabaseError(f"{db}: a folder, not a study database file")
    if not path.exists() and (read_only or not path.parent.is_dir()):
        raise StudyDatabaseError(f"{db}: no such study database" if read_only
                                 else f"{db}: no folder {path.parent} to create the study database in")
    try:
        connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro" if read_only else path, uri=read_only)
        try:
            with connection:
                if not read_only:
                    connection.execute("PRAGMA journal_mode=WAL")
                    connection.execute("PRAGMA synchronous=FULL")
                    connection.execute(SCHEMA)
                elif not connection.execute("SELECT 1 FROM sqlite_master WHERE name = 'answers'").fetchone():
                    raise StudyDatabaseError(f"{db}: not a palette study database (it has no answers table)")
                yield connection
        finally:
            connection.close()
    except sqlite3.Error as error:
        raise StudyDatabaseError(f"{db}: cannot use it as the study database ({error})") from error


def record_answer(db: str | Path, rater: str, pair: Pair, fake_side: Side, choice: Side, seconds: float,
                  shown_seconds: float) -> bool:
    """Store one answer at once (a crash loses nothing); True when the rater took the model output for the photo."""
    if fake_side not in SIDES or choice not in SIDES:
        raise ValueError(f"sides are {SIDES}, got {fake_side!r} and {choice!r}")
    fooled = choice == fake_side
    with database(db) as connection:  # resolved paths: the same file however the folder was spelled
        connection.execute(
            "INSERT INTO answers (rater, pair, real, fake, model, task, fake_side, choice, fooled, seconds, "
            "shown_seconds, answered_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (rater, pair.name, str(pair.real.resolve()), str(pair.fake.resolve()), pair.model, pair.task, fake_side,
             choice, int(fooled), seconds, shown_seconds, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())))
    return fooled


def answered(db: str | Path, rater: str) -> set[Path]:
    """The model outputs this rater has judged, resolved: a rater who comes back continues where they stopped.

    Older versions stored paths as typed; those resolve from the current folder."""
    with database(db) as connection:
        rows = connection.execute("SELECT fake FROM answers WHERE rater = ?", (rater,)).fetchall()
    return {Path(row[0]).resolve() for row in rows}


def wilson_interval(successes: int, count: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a proportion (Wilson 1927; Newcombe 1998, method 3)."""
    if count <= 0 or not 0 <= successes <= count:
        raise ValueError(f"need 0 <= successes <= count and count > 0, got {successes} of {count}")
    rate = successes / count
    denominator = 1 + z**2 / count
    centre = (rate + z**2 / (2 * count)) / denominator
    margin = z * math.sqrt(rate * (1 - rate) / count + z**2 / (4 * count**2)) / denominator
    # At 0 or all successes a bound is exactly 0 or 1; rounding would leave it a hair inside.
    return (0.0 if successes == 0 else centre - margin), (1.0 if successes == count else centre + margin)


@dataclass(frozen=True)
class FoolRate:
    """The fool rate of one model on one task, with its 95% interval and what it rests on."""

    model: str
    task: str
    fooled: int
    answers: int
    raters: int

    @property
    def rate(self) -> float:
        return self.fooled / self.answers

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.fooled, self.answers)


def fool_rates(db: str | Path) -> list[FoolRate]:
    """One FoolRate per model and task in the answers database."""
    with database(db, read_only=True) as connection:
        rows = connection.execute("SELECT model, task, SUM(fooled), COUNT(*), COUNT(DISTINCT rater) FROM answers "
                                  "GROUP BY model, task ORDER BY model, task").fetchall()
    return [FoolRate(*row) for row in rows]


def format_report(rates: list[FoolRate]) -> str:
    """The fool rates as a text table."""
    if not rates:
        return "no answers yet"
    header = f"{'model':<24} {'task':<13} {'fool rate':>9}  {'95% CI (Wilson)':<16} {'answers':>7} {'raters':>6}"
    lines = [header]
    for row in rates:
        low, high = row.interval
        lines.append(f"{row.model:<24} {row.task:<13} {row.rate:>9.1%}  [{low:5.1%}, {high:5.1%}]"
                     f"  {row.answers:>7} {row.raters:>6}")
    lines.append("fool rate: the share of answers taking the model output for the photo (50% = cannot tell)")
    return "\n".join(lines)


def build_study_app(pairs: list[Pair], db: str | Path, seconds: float = 3.0, seed: int = 0) -> Any:
    """The rater's page: an id, then each pair for `seconds`, and a click on the side taken for the photo."""
    from .serve import import_gradio

    gr = import_gradio()
    if seconds <= 0:
        raise ValueError(f"--seconds must be positive, got {seconds}")
    fakes = [pair.fake.resolve() for pair in pairs]  # as answered() gives them

    def present(state: dict) -> tuple[Any, ...]:
        """The outputs for the state's next pair, or the end of the session."""
        done = state["position"] >= len(state["trials"])
        if done:
            message = f"Done: {state['count']} answer(s) stored. Thank you, {state['rater']}!"
            return (state, gr.update(value=None, visible=False), gr.update(value=None, visible=False),
                    gr.update(visible=False), message)
        index, fake_side = state["trials"][state["position"]]
        pair = pairs[index]
        photos = {fake_side: pair.fake, "right" if fake_side == "left" else "left": pair.real}
        left, right = (np.asarray(open_image(photos[side])) for side in SIDES)
        state = {**state, "shown_at": time.monotonic()}
        message = f"Pair {state['position'] + 1} of {len(state['trials'])}: which one was taken by a camera?"
        return (state, gr.update(value=left, visible=True), gr.update(value=right, visible=True),
                gr.update(visible=True), message)

    def start(rater: str, state: dict | None) -> tuple[Any, ...]:
        rater = rater.strip() or uuid.uuid4().hex[:8]
        seen = answered(db, rater)
        trials = [trial for trial in trial_order(len(pairs), seed, rater) if fakes[trial[0]] not in seen]
        return present({"rater": rater, "trials": trials, "position": 0, "count": 0, "shown_at": None})

    def answer(choice: Side, state: dict | None) -> tuple[Any, ...]:
        if not state or state["shown_at"] is None or state["position"] >= len(state["trials"]):
            raise gr.Error("Start first: enter your id and press Start.")
        index, fake_side = state["trials"][state["position"]]
        record_answer(db, state["rater"], pairs[index], fake_side, choice, time.monotonic() - state["shown_at"],
                      seconds)
        return present({**state, "position": state["position"] + 1, "count": state["count"] + 1})

    def hide() -> tuple[Any, ...]:
        return gr.update(visible=False), gr.update(visible=False), gr.Timer(active=False)

    def arm(state: dict) -> Any:
        """Restart the countdown for the pair just shown (turning the timer off and on resets it)."""
        return gr.Timer(active=state["position"] < len(state["trials"]))

    with gr.Blocks(title="Palette study", analytics_enabled=False) as app:
        gr.Markdown(f"# Which photo was taken by a camera?\nEach pair shows for {seconds:g} seconds. One of the two "
                    "images is a real photo, the other was made by a model. Click the side you think is the photo; "
                    "answer even when unsure.")
        state = gr.State(None)
        with gr.Row():
            rater = gr.Textbox(label="Your name or id", elem_id="rater")
            begin = gr.Button("Start", elem_id="start")
        message = gr.Markdown(elem_id="message")
        with gr.Row():
            left = gr.Image(label="Left", visible=False, interactive=False, format="png", buttons=[], elem_id="left")
            right = gr.Image(label="Right", visible=False, interactive=False, format="png", buttons=[],
                             elem_id="right")
        with gr.Row(visible=False) as buttons:
            pick_left = gr.Button("The left one is the photo", elem_id="pick-left")
            pick_right = gr.Button("The right one is the photo", elem_id="pick-right")
        timer = gr.Timer(seconds, active=False)
        outputs = [state, left, right, buttons, message]
        stop = dict(fn=lambda: gr.Timer(active=False), inputs=None, outputs=timer, api_visibility="private")
        then_arm = dict(fn=arm, inputs=state, outputs=timer, api_visibility="private")
        begin.click(**stop).then(start, [rater, state], outputs, api_name="start").then(**then_arm)
        pick_left.click(**stop).then(lambda state: answer("left", state), state, outputs, api_name="left").then(
            **then_arm)
        pick_right.click(**stop).then(lambda state: answer("right", state), state, outputs, api_name="right").then(
            **then_arm)
        timer.tick(hide, None, [left, right, timer], api_visibility="private")
    return app


def serve_study(real: str | Path, fake: list[str | Path], db: str | Path = "study.sqlite", seconds: float = 3.0,
                seed: int = 0, model: str | None = None, task: str | None = None, host: str | None = None,
                port: int | None = None, block: bool = True) -> Any:
    """`palette study serve`: find the pairs, then serve the rater's page (on port 7861 unless told)."""
    from .serve import launch

    pairs = find_pairs(real, list(fake), model, task)
    check_readable(pairs)
    with database(db):  # a bad path fails now, not at the first answer
        pass
    print(f"{len(pairs)} pair(s); answers go to {Path(db).resolve()}")
    return launch(build_study_app(pairs, db, seconds, seed), host, port or 7861, block)
