"""palette serve through its API (gradio_client) with tiny random models: every task gives what `palette sample`
and `palette extend` give for the same file, model and seed; a model trained on JPEG alone is offered first for JPEG
and refused elsewhere; caps, the bound address, and no request off the machine."""

from __future__ import annotations

import socket
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from palette.imageio import load_image
from palette.serve import MAX_UPLOAD_BYTES, is_loopback, mask_from_strokes, model_choices, read_upload
from palette.tasks import TASKS, luma

from conftest import save_tiny_model

pytest.importorskip("gradio")
pytestmark = [pytest.mark.filterwarnings("ignore:.*no_silent_downcasting:Warning"),
              pytest.mark.filterwarnings("ignore:The copy keyword is deprecated:Warning")]

WIDTH, HEIGHT = 40, 24
HOLE = (slice(8, 16), slice(10, 22))  # rows, columns of the painted stroke
SIDES = dict(left=0, right=16, top=8, bottom=0)
OPTIONS = dict(sampler="ddim", steps=2, seed=3)

# Every host this process looks up or connects to while the server runs (an audit hook cannot be removed, so it
# records only while a list is installed).
_contacts: list[str] | None = None


def _audit(event: str, args: tuple) -> None:
    if _contacts is not None and event in ("socket.connect", "socket.getaddrinfo"):
        address = args[1] if event == "socket.connect" else args[:2]
        if isinstance(address, tuple) and address and isinstance(address[0], (str, bytes)):
            _contacts.append(address[0].decode() if isinstance(address[0], bytes) else address[0])


sys.addaudithook(_audit)


def write_photo(path: Path, width: int = WIDTH, height: int = HEIGHT) -> Path:
    """A colourful photo: gradients plus a little noise, so JPEG and colour have something to do."""
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[0:height, 0:width]
    pixels = np.stack([rows * 255 / height, cols * 255 / width, 255 - cols * 255 / width], -1)
    pixels = np.clip(pixels + rng.normal(0, 8, pixels.shape), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def save_tiny_models(folder: Path) -> dict[str, Path]:
    """Two tiny random models by name: "tiny", trained on every task by its config, and "tiny-jpeg", on JPEG only
    and sampling with DPM-Solver++ (tiny's: DDIM)."""
    return {"tiny": save_tiny_model(folder),
            "tiny-jpeg": save_tiny_model(folder, tasks={"jpeg": 1.0}, seed=1, name="jpeg.safetensors", sampler="dpmpp")}


def start_server(checkpoints: dict[str, Path], port: int):
    from palette.inference import load_model
    from palette.serve import build_app, launch

    models = {name: load_model(checkpoint, "cpu") for name, checkpoint in checkpoints.items()}
    return launch(build_app(models), port=port, block=False)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(client, checkpoints, folder, port, app, contacts) of a server on 127.0.0.1 with two tiny models: "tiny",
    the default, and "tiny-jpeg" (save_tiny_models)."""
    global _contacts
    from gradio_client import Client
    from huggingface_hub import constants

    folder = tmp_path_factory.mktemp("serve")
    checkpoints = save_tiny_models(folder)
    port = free_port()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(constants, "HF_HUB_OFFLINE", True)  # the test's own client looks nothing up on the Hub
        patch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
        _contacts = contacts = []
        app = start_server(checkpoints, port)
        try:
            yield Client(f"http://127.0.0.1:{port}/", verbose=False), checkpoints, folder, port, app, contacts
        finally:
            app.close()
            _contacts = None


def _restore(client, photo: Path, task: str, drawing=None, samples: int = 2, steps: int | None = OPTIONS["steps"],
             model: str = "tiny", sampler: str = OPTIONS["sampler"]):
    from gradio_client import handle_file

    return client.predict(handle_file(str(photo)), task, model, drawing, *SIDES.values(), sampler, steps,
                          OPTIONS["seed"], samples, api_name="/restore")


def _pixels(path: str | Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _stroke_layer(folder: Path, width: int = WIDTH, height: int = HEIGHT) -> Path:
    """The editor's drawn layer: transparent except the stroke (the brush's colour, opaque)."""
    layer = np.zeros((height, width, 4), np.uint8)
    layer[HOLE] = (255, 0, 255, 255)
    Image.fromarray(layer).save(folder / "layer.png")
    return folder / "layer.png"


@pytest.mark.parametrize("task", list(TASKS))
def test_each_task_gives_what_the_cli_gives(served, task, tmp_path):
    from gradio_client import handle_file

    from palette.folders import extend_file, sample_folder

    client, checkpoints, folder, *_ = served
    checkpoint = checkpoints["tiny"]
    photo = write_photo(tmp_path / "photo.png")
    drawing = None
    if task == "inpainting":
        layer = _stroke_layer(tmp_path)
        drawing = {"background": handle_file(str(photo)), "layers": [handle_file(str(layer))],
                   "composite": handle_file(str(photo))}
    (before, after), gallery, files, notes = _restore(client, photo, task, drawing)
    assert [Path(item["image"]).name for item in gallery] == [Path(file).name for file in files]
    assert [Path(file).suffix for file in files] == [".png", ".png"] and after == files[0]
    outputs = [_pixels(file) for file in files]

    if task == "uncropping":
        expected = [_pixels(extend_file(checkpoint, photo, tmp_path / f"cli_{k}.png", **SIDES, sampler="ddim",
                                        steps=2, seed=OPTIONS["seed"] + k, device="cpu", progress=False))
                    for k in range(2)]
    else:
        mask = None
        if task == "inpainting":
            mask = tmp_path / "mask.png"
            hole = np.zeros((HEIGHT, WIDTH), np.uint8)
            hole[HOLE] = 255
            Image.fromarray(hole).save(mask)
        with warnings.catch_warnings(record=True) as warned:
            warnings.simplefilter("always")
            written = sample_folder(checkpoint, task, photo, tmp_path / "cli", mask=mask, num_samples=2,
                                    device="cpu", progress=False, **OPTIONS)
        expected = [_pixels(path) for path in written]
        # The CLI says what the UI's notes say: a colour photo given for colorization was made gray first.
        assert any("converted to gray" in str(w.message) for w in warned) == (task == "colorization")
    for output, cli_output in zip(outputs, expected):
        np.testing.assert_array_equal(output, cli_output)  # one code path: the same pixels as the CLI
    assert not np.array_equal(outputs[0], outputs[1])  # two samples, two seeds

    original = _pixels(photo)
    if task == "uncropping":
        assert outputs[0].shape == (HEIGHT + SIDES["top"], WIDTH + SIDES["right"], 3)
        known = outputs[0][SIDES["top"]:, :WIDTH]
        np.testing.assert_array_equal(known, original)
        assert _pixels(before).shape == outputs[0].shape
    else:
        assert outputs[0].shape == original.shape == _pixels(before).shape
    if task == "inpainting":
        outside = np.ones((HEIGHT, WIDTH), bool)
        outside[HOLE] = False
        np.testing.assert_array_equal(outputs[0][outside], original[outside])
        assert np.abs(outputs[0][HOLE].astype(int) - original[HOLE]).mean() > 1  # the hole was generated
        assert (_pixels(before)[HOLE] == 128).all()  # "before" shows the hole as mid-gray
    if task == "colorization":
        assert "converted to gray" in notes
        gray = luma(load_image(photo))
        np.testing.assert_allclose(luma(load_image(after)), gray, atol=2.5 / 127.5)  # the luma is the input's
        assert np.ptp(_pixels(before), axis=-1).max() == 0  # "before" is the gray image
    else:
        assert "converted to gray" not in notes


def test_a_light_jpeg_keeps_the_share_of_the_change_its_quality_sets_as_in_the_cli(served, tmp_path):
    from palette.folders import sample_folder

    client, checkpoints, *_ = served
    checkpoint = checkpoints["tiny"]
    Image.open(write_photo(tmp_path / "source.png")).save(tmp_path / "light.jpg", quality=90)
    Image.open(tmp_path / "light.jpg").save(tmp_path / "decoded.png")  # the same pixels, no quantisation tables
    _, _, files, notes = _restore(client, tmp_path / "light.jpg", "jpeg", samples=1)
    assert "not a JPEG" not in notes
    cli = sample_folder(checkpoint, "jpeg", tmp_path / "light.jpg", tmp_path / "cli", device="cpu", progress=False,
                        **OPTIONS)
    np.testing.assert_array_equal(_pixels(files[0]), _pixels(cli[0]))  # the upload's own file: its quality
    whole = sample_folder(checkpoint, "jpeg", tmp_path / "decoded.png", tmp_path / "whole", device="cpu",
                          progress=False, **OPTIONS)
    given = _pixels(tmp_path / "decoded.png").astype(int)
    change, whole_change = (np.abs(_pixels(path).astype(int) - given).mean() for path in (files[0], whole[0]))
    assert change < 0.2 * whole_change  # Q 90 keeps 6% of the correction


def test_a_gray_photo_is_not_converted(served, tmp_path):
    client, *_ = served
    photo = tmp_path / "gray.png"
    Image.fromarray(_pixels(write_photo(tmp_path / "colour.png"))[..., 0]).convert("RGB").save(photo)
    *_, notes = _restore(client, photo, "colorization", samples=1)
    assert "converted to gray" not in notes and "1 sample(s) at 40×24" in notes


def test_inpainting_needs_a_stroke(served, tmp_path):
    from gradio_client.exceptions import AppError

    client, *_ = served
    with pytest.raises(AppError, match="paint over the part to fill"):
        _restore(client, write_photo(tmp_path / "photo.png"), "inpainting")


def test_an_image_over_the_pixel_cap_gets_the_message(served, tmp_path, monkeypatch):
    from gradio_client.exceptions import AppError

    client, *_ = served
    monkeypatch.setenv("PALETTE_MAX_PIXELS", str(WIDTH * HEIGHT - 1))  # read by the server at each upload
    with pytest.raises(AppError, match="over the limit of 959 pixels"):
        _restore(client, write_photo(tmp_path / "photo.png"), "jpeg", samples=1)


def test_a_file_over_50_MB_is_refused(served, tmp_path, monkeypatch):
    client, _, _, _, app, _ = served
    assert MAX_UPLOAD_BYTES == 50 * 2**20 and app.max_file_size == MAX_UPLOAD_BYTES
    big = tmp_path / "big.png"
    big.write_bytes(write_photo(tmp_path / "photo.png").read_bytes() + bytes(MAX_UPLOAD_BYTES))
    with pytest.raises(ValueError, match="exceeds the maximum file size of 52428800 bytes"):
        _restore(client, big, "jpeg", samples=1)  # gradio refuses the upload itself
    with pytest.raises(ValueError, match=r"big.png: 50.0 MB, over the limit of 50 MB"):
        read_upload(big)  # and the handler, should a file reach it another way


def test_steps_0_sample_with_the_models_steps_for_the_task(served, tmp_path):
    from palette.folders import sample_folder

    client, checkpoints, *_ = served
    checkpoint = checkpoints["tiny"]
    photo = write_photo(tmp_path / "photo.png")
    (_, after), *_ = _restore(client, photo, "jpeg", samples=1, steps=0)  # the page's default
    options = dict(OPTIONS, steps=None)
    written = sample_folder(checkpoint, "jpeg", photo, tmp_path / "cli", device="cpu", progress=False, **options)
    np.testing.assert_array_equal(_pixels(after), _pixels(written[0]))
    stepped = sample_folder(checkpoint, "jpeg", photo, tmp_path / "cli2", device="cpu", progress=False,
                            **dict(OPTIONS, steps=1))
    assert not np.array_equal(_pixels(after), _pixels(stepped[0]))  # so the default was not one step


def test_the_empty_sampler_is_each_models_own(served, tmp_path):
    from palette.folders import sample_folder

    client, checkpoints, *_ = served
    photo = write_photo(tmp_path / "photo.png")
    options = dict(OPTIONS, steps=4)  # at 2 steps DDIM and DPM-Solver++ (2M) coincide
    (_, after), *_ = _restore(client, photo, "jpeg", samples=1, steps=4, model="tiny-jpeg", sampler="")
    own = sample_folder(checkpoints["tiny-jpeg"], "jpeg", photo, tmp_path / "own", device="cpu", progress=False,
                        **dict(options, sampler=None))
    np.testing.assert_array_equal(_pixels(after), _pixels(own[0]))  # DPM-Solver++, its config's
    ddim = sample_folder(checkpoints["tiny-jpeg"], "jpeg", photo, tmp_path / "ddim", device="cpu", progress=False,
                         **options)
    assert not np.array_equal(_pixels(after), _pixels(ddim[0]))  # not the default model's DDIM


def test_each_task_offers_the_models_trained_on_it_fewest_tasks_first(served):
    from palette.inference import load_model

    _, checkpoints, *_ = served
    models = {name: load_model(path, "cpu") for name, path in checkpoints.items()}
    assert model_choices(models, "jpeg") == ["tiny-jpeg", "tiny"]  # the JPEG-only model first: the UI's default
    assert [model_choices(models, task) for task in TASKS if task != "jpeg"] == [["tiny"]] * 3
    assert model_choices({"tiny-jpeg": models["tiny-jpeg"]}, "inpainting") == ["tiny-jpeg"]  # none trained on it


def test_a_jpeg_restored_by_the_jpeg_model_is_what_the_cli_gives_with_it(served, tmp_path):
    from gradio_client.exceptions import AppError

    from palette.folders import sample_folder

    client, checkpoints, *_ = served
    photo = write_photo(tmp_path / "photo.png")
    (_, after), _, _, notes = _restore(client, photo, "jpeg", samples=1, model="tiny-jpeg")
    cli = sample_folder(checkpoints["tiny-jpeg"], "jpeg", photo, tmp_path / "cli", device="cpu", progress=False,
                        **OPTIONS)
    np.testing.assert_array_equal(_pixels(after), _pixels(cli[0]))
    (_, default), *_ = _restore(client, photo, "jpeg", samples=1)
    assert np.abs(_pixels(default).astype(int) - _pixels(after)).mean() > 1  # the other model's pixels
    assert "the tiny-jpeg model (`--checkpoint tiny-jpeg`)" in notes
    assert "The file is not a JPEG, so its quality cannot be read" in notes  # a PNG: the whole correction
    with pytest.raises(AppError, match="'tiny-jpeg' is not offered for colorization: choose one of tiny$"):
        _restore(client, photo, "colorization", samples=1, model="tiny-jpeg")


def test_the_defaults_are_the_models_sampling_config(served):
    *_, app, _ = served
    values = {block.label: getattr(block, "value", None) for block in app.blocks.values() if hasattr(block, "label")}
    sampler = next(block for block in app.blocks.values() if getattr(block, "label", None) == "Sampler")
    assert values["Sampler"] == "" and sampler.choices[0] == ("the model's (tiny ddim, tiny-jpeg dpmpp)", "")
    assert values["Steps"] == 0  # each task samples with the model's own steps for it
    assert values["Task"] == next(iter(TASKS))
    model = next(block for block in app.blocks.values() if getattr(block, "label", None) == "Model")
    assert model.value == "tiny" and not model.visible  # colorization: one model trained on it, no choice shown


def test_mask_from_strokes_scales_the_editor_view_to_the_photo():
    strokes = np.zeros((3, 4), np.uint8)
    strokes[1, 2] = 200
    mask = mask_from_strokes(strokes, 6, 8)
    assert mask.shape == (1, 6, 8) and mask.sum() == 4 and mask[0, 2:4, 4:6].all()


def test_the_server_listens_on_loopback_only(served):
    _, _, _, port, app, _ = served
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and not is_loopback("0.0.0.0")
    assert app.server_name == "127.0.0.1" and not app.share
    if not Path("/proc/net/tcp").exists():
        pytest.skip("needs Linux's /proc/net/tcp to read bound addresses")
    listening = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                listening.append(address)
    assert listening == ["0100007F"]  # 127.0.0.1, little-endian hex; nothing on 0.0.0.0 or IPv6


def test_nothing_leaves_the_machine(served, tmp_path):
    client, _, _, _, app, contacts = served
    _restore(client, write_photo(tmp_path / "photo.png"), "jpeg", samples=1)
    assert app.analytics_enabled is False
    assert contacts and all(is_loopback(host) for host in contacts), sorted(set(contacts))


def test_palette_serve_serves_every_checkpoint_given(tmp_path):
    from palette.cli import build_parser
    from palette.serve import serve

    checkpoints = [str(path) for path in save_tiny_models(tmp_path).values()]
    args = build_parser().parse_args(["serve", "--checkpoint", checkpoints[0], "--checkpoint", checkpoints[1]])
    for given, served in ((args.checkpoint, checkpoints), (checkpoints[1], checkpoints[1:])):  # a list, or one
        app = serve(given, port=free_port(), device="cpu", block=False)
        try:
            model = next(block for block in app.blocks.values() if getattr(block, "label", None) == "Model")
            assert [value for _, value in model.choices] == served and model.value == served[0]
        finally:
            app.close()


def test_the_cli_serves_on_loopback_by_default_and_names_a_missing_extra(monkeypatch):
    import palette.serve
    from palette.cli import build_parser, main

    args = build_parser().parse_args(["serve"])
    assert (args.checkpoint, args.host, args.port) == (None, None, None)  # serve's defaults: shipped model, loopback

    def missing() -> None:
        raise ModuleNotFoundError("the browser UI needs gradio: pip install -e '.[ui]'")

    monkeypatch.setattr(palette.serve, "import_gradio", missing)
    with pytest.raises(SystemExit, match=r"palette serve: error: .*pip install -e '\.\[ui\]'"):
        main(["serve", "--checkpoint", "no-such-model"])  # refused before the model is looked for
