"""The human evaluation: golden Wilson intervals, pair finding, and a scripted rater through the served page."""

from __future__ import annotations

import socket
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from palette.cli import main
from palette.imageio import ImageError
from palette.study import (FoolRate, StudyDatabaseError, find_pairs, fool_rates, format_report, model_and_task,
                           record_answer, trial_order, wilson_interval)

REAL_LEVEL, FAKE_LEVEL = 200, 40  # a scripted rater tells them apart by brightness


@pytest.mark.parametrize("successes, count, low, high", [
    # Newcombe (1998), Statistics in Medicine 17:857, Table II, method 3 (Wilson score, no continuity correction)
    (81, 263, 0.2553, 0.3662),
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0000, 0.1611),
    (1, 29, 0.0061, 0.1718),
])
def test_wilson_interval_matches_published_values(successes, count, low, high):
    assert wilson_interval(successes, count) == pytest.approx((low, high), abs=5e-5)


def test_wilson_interval_edges_and_refusals():
    assert wilson_interval(10, 10)[1] == 1.0 and wilson_interval(0, 10)[0] == 0.0
    low, high = wilson_interval(5, 10)
    assert low + high == pytest.approx(1.0)  # symmetric about one half
    for successes, count in ((1, 0), (-1, 5), (6, 5)):
        with pytest.raises(ValueError):
            wilson_interval(successes, count)


def test_model_and_task_from_folder_names(tmp_path):
    assert model_and_task(tmp_path / "palette-64_inpainting") == ("palette-64", "inpainting")
    assert model_and_task(tmp_path / "palette-64" / "jpeg") == ("palette-64", "jpeg")
    assert model_and_task(tmp_path / "colorization" / "run7") == ("run7", "colorization")
    with pytest.raises(ValueError, match="--task"):
        model_and_task(tmp_path / "outputs")


def _write(folder: Path, names: list[str], level: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.fromarray(np.full((16, 24, 3), level, np.uint8)).save(folder / f"{name}.png")


def _study_folders(tmp_path: Path, count: int = 10) -> tuple[Path, Path]:
    names = [f"image{index}" for index in range(count)]
    _write(tmp_path / "real", names + ["extra"], REAL_LEVEL)
    _write(tmp_path / "palette-64_inpainting", names, FAKE_LEVEL)
    return tmp_path / "real", tmp_path / "palette-64_inpainting"


def test_find_pairs_matches_stems_and_refuses_an_output_without_a_photo(tmp_path):
    real, fake = _study_folders(tmp_path, 3)
    pairs = find_pairs(real, [fake])
    assert [(pair.name, pair.model, pair.task) for pair in pairs] == [
        (f"image{index}", "palette-64", "inpainting") for index in range(3)]
    assert all(pair.real.parent == real and pair.fake.parent == fake for pair in pairs)
    assert find_pairs(real, [fake], model="mine", task="jpeg")[0].model == "mine"
    _write(fake, ["orphan"], FAKE_LEVEL)
    with pytest.raises(ImageError, match="orphan.png"):
        find_pairs(real, [fake])


def test_find_pairs_refuses_two_photos_with_one_name(tmp_path):
    real, fake = _study_folders(tmp_path, 2)
    _write(real / "a", ["image0"], REAL_LEVEL)
    with pytest.raises(ImageError) as caught:
        find_pairs(real, [fake])
    assert str(caught.value) == (f"{real / 'a' / 'image0.png'} and {real / 'image0.png'}: two real photos named "
                                 "'image0', and model outputs are matched to photos by name; rename or remove one")


def test_trial_order_is_seeded_per_rater():
    order = trial_order(10, seed=0, rater="ann")
    assert order == trial_order(10, seed=0, rater="ann")
    assert sorted(index for index, _ in order) == list(range(10))
    assert order != trial_order(10, seed=0, rater="bob") and order != trial_order(10, seed=1, rater="ann")
    sides = [side for _, side in trial_order(1000, seed=0, rater="ann")]
    assert 450 < sides.count("left") < 550


def test_report_counts_answers_and_raters(tmp_path, capsys):
    real, fake = _study_folders(tmp_path, 4)
    pairs = find_pairs(real, [fake])
    db = tmp_path / "study.sqlite"
    for rater, choices in (("ann", "llrr"), ("bob", "lllr")):
        for pair, choice in zip(pairs, choices):
            record_answer(db, rater, pair, "left", "left" if choice == "l" else "right", 1.5, 3.0)
    assert fool_rates(db) == [FoolRate("palette-64", "inpainting", fooled=5, answers=8, raters=2)]
    main(["study", "report", str(db)])
    assert "62.5%" in capsys.readouterr().out
    with pytest.raises(ValueError):
        record_answer(db, "ann", pairs[0], "left", "up", 1.0, 3.0)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _is_fake(image_path: str) -> bool:
    return np.asarray(Image.open(image_path)).mean() < (REAL_LEVEL + FAKE_LEVEL) / 2


@pytest.mark.filterwarnings("ignore:.*no_silent_downcasting:Warning")
@pytest.mark.filterwarnings("ignore:The copy keyword is deprecated:Warning")
def test_a_scripted_rater_through_ten_pairs(tmp_path, monkeypatch):
    pytest.importorskip("gradio")
    from gradio_client import Client
    from huggingface_hub import constants

    from palette.study import serve_study

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # the test's client: no Hub look-ups
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    real, fake = _study_folders(tmp_path, 10)
    pairs = find_pairs(real, [fake])
    order = trial_order(len(pairs), seed=7, rater="ann")
    fooled_pairs = {"image1", "image4", "image8"}  # the rater takes these model outputs for the photo
    seen_sides = []

    def play(client: Client, outputs: tuple, answers: int) -> tuple:
        for _ in range(answers):
            left, right, message = outputs
            assert "which one was taken by a camera" in message and left["visible"] and right["visible"]
            assert _is_fake(left["value"]) != _is_fake(right["value"])
            fake_side = "left" if _is_fake(left["value"]) else "right"
            seen_sides.append(fake_side)
            fooled = pairs[order[len(seen_sides) - 1][0]].name in fooled_pairs
            choice = fake_side if fooled else ("right" if fake_side == "left" else "left")
            outputs = client.predict(api_name=f"/{choice}")
        return outputs

    db = tmp_path / "study.sqlite"
    port = _free_port()
    app = serve_study(real, [fake], db=db, seconds=3, seed=7, port=port, block=False)
    try:
        first = Client(f"http://127.0.0.1:{port}/", verbose=False)
        play(first, first.predict("ann", api_name="/start"), 5)
        with sqlite3.connect(db) as connection:  # every answer is on disk as soon as it is given
            assert connection.execute("SELECT COUNT(*) FROM answers").fetchone()[0] == 5
        connection.close()
        second = Client(f"http://127.0.0.1:{port}/", verbose=False)  # ann comes back and continues
        left, right, message = play(second, second.predict("ann", api_name="/start"), 5)
        assert message.startswith("Done: 5 answer(s) stored") and not left["visible"] and not right["visible"]
    finally:
        app.close()

    with sqlite3.connect(db) as connection:
        rows = connection.execute("SELECT rater, pair, fake_side, choice, fooled, seconds, shown_seconds, model, task "
                                  "FROM answers ORDER BY id").fetchall()
    connection.close()
    assert [row[1] for row in rows] == [pairs[index].name for index, _ in order]  # the seeded order
    assert [row[2] for row in rows] == [side for _, side in order] == seen_sides  # the seeded sides, as shown
    assert {row[1] for row in rows if row[4]} == fooled_pairs
    assert all(row[4] == (row[3] == row[2]) for row in rows)
    assert all(row[0] == "ann" and 0 <= row[5] < 60 and row[6] == 3 for row in rows)
    assert {(row[7], row[8]) for row in rows} == {("palette-64", "inpainting")}
    (rate,) = fool_rates(db)
    assert (rate.fooled, rate.answers, rate.raters) == (3, 10, 1)
    assert rate.interval == pytest.approx((0.1078, 0.6032), abs=5e-5)
    report = format_report([rate])
    assert "30.0%" in report and "[10.8%, 60.3%]" in report


def _cli_error(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    return line


def test_database_errors_are_one_line_naming_the_file(tmp_path, capsys):
    pytest.importorskip("gradio")  # `palette study serve` checks for it first
    real, fake = _study_folders(tmp_path, 2)
    (pair, _) = find_pairs(real, [fake])
    folder, no_folder, not_db = tmp_path / "answers", tmp_path / "missing" / "study.sqlite", tmp_path / "notdb.txt"
    folder.mkdir()
    not_db.write_text("rater,pair\n")
    serve = ["study", "serve", "--real", str(real), "--fake", str(fake), "--db"]
    assert _cli_error(capsys, serve + [str(folder)]) == (
        f"palette study: error: {folder}: a folder, not a study database file")
    assert _cli_error(capsys, serve + [str(no_folder)]) == (
        f"palette study: error: {no_folder}: no folder {no_folder.parent} to create the study database in")
    assert _cli_error(capsys, serve + [str(not_db)]) == (
        f"palette study: error: {not_db}: cannot use it as the study database (file is not a database)")
    assert _cli_error(capsys, ["study", "report", str(not_db)]) == (
        f"palette study: error: {not_db}: cannot use it as the study database (file is not a database)")
    with pytest.raises(StudyDatabaseError, match="file is not a database"):
        record_answer(not_db, "ann", pair, "left", "left", 1.0, 3.0)
    assert not_db.read_text() == "rater,pair\n" and not no_folder.parent.exists()


def test_report_changes_nothing_it_reads(tmp_path, capsys):
    real, fake = _study_folders(tmp_path, 2)
    study, other, empty, missing = (tmp_path / name for name in ("study.sqlite", "other.sqlite", "empty.sqlite",
                                                                  "missing.sqlite"))
    for pair in find_pairs(real, [fake]):
        record_answer(study, "ann", pair, "left", "right", 1.0, 3.0)
    with sqlite3.connect(other) as connection:
        connection.execute("CREATE TABLE notes (text TEXT)")
    connection.close()
    empty.touch()
    files = {path: path.read_bytes() for path in (study, other, empty)}
    assert fool_rates(study) == [FoolRate("palette-64", "inpainting", fooled=0, answers=2, raters=1)]
    for db, problem in ((other, "not a palette study database (it has no answers table)"),
                        (empty, "not a palette study database (it has no answers table)"),
                        (missing, "no such study database")):
        assert _cli_error(capsys, ["study", "report", str(db)]) == f"palette study: error: {db}: {problem}"
    assert {path: path.read_bytes() for path in (study, other, empty)} == files
    assert not missing.exists() and not list(tmp_path.glob("other.sqlite-*"))


@pytest.mark.filterwarnings("ignore:.*no_silent_downcasting:Warning")
@pytest.mark.filterwarnings("ignore:The copy keyword is deprecated:Warning")
def test_a_returning_rater_continues_however_the_folders_are_spelled(tmp_path, monkeypatch):
    pytest.importorskip("gradio")
    from gradio_client import Client
    from huggingface_hub import constants

    from palette.study import serve_study

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    real, fake = _study_folders(tmp_path, 10)
    db = tmp_path / "study.sqlite"
    for pair in find_pairs(real, [fake])[:3]:  # answered on a server started with absolute folders
        record_answer(db, "ann", pair, "left", "left", 1.0, 3.0)
    with sqlite3.connect(db) as connection:  # a row of an older version: the path as typed, relative
        connection.execute("INSERT INTO answers (rater, pair, real, fake, model, task, fake_side, choice, fooled, "
                           "seconds, shown_seconds, answered_at) VALUES ('ann', 'image5', 'real/image5.png', ?, "
                           "'palette-64', 'inpainting', 'left', 'right', 0, 1.0, 3.0, '2024-01-01T00:00:00Z')",
                           (f"../{tmp_path.name}/palette-64_inpainting/image5.png",))
    connection.close()
    monkeypatch.chdir(tmp_path)
    port = _free_port()
    app = serve_study("real", ["./palette-64_inpainting"], db=db, port=port, block=False)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        _, _, message = client.predict("ann", api_name="/start")
        assert message.startswith("Pair 1 of 6:")
        for _ in range(6):
            _, _, message = client.predict(api_name="/left")
        assert message.startswith("Done: 6 answer(s) stored")
    finally:
        app.close()
    with sqlite3.connect(db) as connection:
        fakes = [Path(row[0]).resolve() for row in connection.execute("SELECT fake FROM answers")]
    connection.close()
    assert len(fakes) == len(set(fakes)) == 10


def test_serve_refuses_an_image_it_cannot_show(tmp_path):
    pytest.importorskip("gradio")
    from palette.study import serve_study

    real, fake = _study_folders(tmp_path, 4)
    db = tmp_path / "study.sqlite"
    (fake / "image2.png").write_bytes(b"\x00garbage, not a PNG" * 8)
    with pytest.raises(ImageError) as caught:
        serve_study(real, [fake], db=db, port=_free_port(), block=False)
    assert str(caught.value) == f"{fake / 'image2.png'}: not a readable image (Pillow recognises no image format in it)"
    _write(fake, ["image2"], FAKE_LEVEL)
    truncated = (real / "image3.png").read_bytes()[:-30]  # its pixel data cut short; the header still reads
    (real / "image3.png").write_bytes(truncated)
    with pytest.raises(ImageError, match=f"^{real / 'image3.png'}: not a readable image"):
        serve_study(real, [fake], db=db, port=_free_port(), block=False)
    assert not db.exists()
