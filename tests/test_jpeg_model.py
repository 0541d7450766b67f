"""The bundled JPEG model (`--checkpoint jpeg`): a heavily compressed photo at its own size loses its blocks.

The bundled photos are saved as quality-10 JPEG files and restored whole, as `palette sample --task jpeg` restores
a user's file. The bar is run against the same network with fresh weights too, which must fail it. A gray photo's
JPEG comes back gray, through this model and the default.
"""

import numpy as np
import pytest
import torch
from PIL import Image

from palette.checkpoint import CheckpointError, bundled_model_path, resolve_weights
from palette.demo import example_images, run_demo
from palette.imageio import load_image, pil_to_tensor
from palette.inference import Model, load_model, load_models, restore_image, trained_tasks
from palette.metrics import psnr
from palette.network import PaletteNet
from palette.tasks import Task, get_task, luma

QUALITY = 10


@pytest.fixture(scope="module")
def model() -> Model:
    return load_model("jpeg", "cpu")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> list[tuple[torch.Tensor, Task, torch.Tensor]]:
    """(truth, task read from the file, decoded file) for each bundled photo saved at QUALITY."""
    folder = tmp_path_factory.mktemp("jpeg")
    out = []
    for path in example_images():
        file = folder / f"{path.stem}.jpg"
        with Image.open(path) as image:
            image.convert("RGB").save(file, quality=QUALITY)
        out.append((load_image(path), get_task("jpeg").for_file(file), load_image(file)))
    return out


def blockiness(image: torch.Tensor) -> float:
    """The mean luma step across the 8 px block edges of JPEG's grid over the mean step elsewhere (1: no blocks)."""
    y = luma(image[None].double())[0, 0]
    across_x, across_y = (y[:, 1:] - y[:, :-1]).abs(), (y[1:] - y[:-1]).abs()
    edge_x, edge_y = torch.arange(across_x.shape[1]) % 8 == 7, torch.arange(across_y.shape[0]) % 8 == 7
    edges = across_x[:, edge_x].mean() + across_y[edge_y].mean()
    return float(edges / (across_x[:, ~edge_x].mean() + across_y[~edge_y].mean()))


def _psnr(image: torch.Tensor, truth: torch.Tensor) -> float:
    return float(psnr((image[None] + 1) / 2, (truth[None] + 1) / 2))


def deblocking_margin(model: Model, files) -> float:
    """PSNR at least 0.8 dB over the file's on average, and at most 60% of the file's excess blockiness (over 1)
    left. The bundled model gains 0.96 dB and leaves 43% (the multi-task default: 0.59 dB, 87%); an untrained
    network returns the file, or adds noise."""
    gains, excess = [], []
    for truth, task, decoded in files:
        output = restore_image(model, task, decoded, progress=False)
        gains.append(_psnr(output, truth) - _psnr(decoded, truth))
        excess.append((blockiness(output) - 1) / (blockiness(decoded) - 1))
    return min(np.mean(gains) - 0.8, 0.6 - np.mean(excess))


def test_the_jpeg_model_takes_the_blocks_out_of_a_whole_photo(model, files):
    assert files[0][1].quality == QUALITY  # the task reads the file's quality, as `palette sample` does
    assert deblocking_margin(model, files) > 0


@pytest.mark.parametrize("name, least_gain", [("jpeg", 0.6), ("multitask", 0.1)])
def test_a_gray_photos_jpeg_comes_back_gray(tmp_path, name, least_gain):
    """Restored with colour, the four gray files came back tinted by up to 41 levels; they gain 0.77 dB (the JPEG
    model) and 0.16 dB (the default) over the file."""
    gains, model = [], load_model(name, "cpu")
    for path in example_images():
        with Image.open(path) as image:
            image.convert("L").save(tmp_path / "gray.jpg", quality=QUALITY)
            truth = pil_to_tensor(image.convert("L").convert("RGB"))
        decoded = load_image(tmp_path / "gray.jpg", "RGB")
        output = restore_image(model, get_task("jpeg").for_file(tmp_path / "gray.jpg"), decoded, progress=False)
        assert torch.equal(output[0], output[1]) and torch.equal(output[1], output[2])
        gains.append(_psnr(output, truth) - _psnr(decoded, truth))
    assert np.mean(gains) > least_gain


@pytest.mark.parametrize("output_layer", ["random", "as initialised (zero)"])
def test_an_untrained_network_fails_the_deblocking_bar(model, files, output_layer):
    torch.manual_seed(0)
    net = PaletteNet.from_config(model.config).eval()
    if output_layer == "random":
        net.unet.conv_out.reset_parameters()
    assert deblocking_margin(Model(net, model.config, model.device), files) <= 0


def test_the_jpeg_model_is_a_jpeg_only_twin_of_the_default(model):
    assert set(model.config.data.tasks) == {"jpeg"} and model.guide is None
    assert model.config.network == load_model("multitask", "cpu").config.network


def test_a_path_here_wins_over_a_bundled_name(tmp_path, monkeypatch):
    assert resolve_weights("jpeg") == bundled_model_path("jpeg")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "jpeg").mkdir()
    with pytest.raises(CheckpointError, match="^jpeg: no checkpoint found .* bundled model: multitask, jpeg"):
        resolve_weights("jpeg")


def test_the_shipped_model_brings_the_jpeg_model_and_no_other_does(tmp_path):
    from conftest import save_tiny_model

    for checkpoint in (None, "multitask", bundled_model_path("multitask")):
        models = load_models(checkpoint, "cpu")
        assert list(models) == ["multitask", "jpeg"] and trained_tasks(models["jpeg"]) == ["jpeg"]
        assert len(trained_tasks(models["multitask"])) == 4
    assert list(load_models("jpeg", "cpu")) == ["jpeg"]
    tiny = save_tiny_model(tmp_path)
    assert list(load_models(tiny, "cpu")) == [str(tiny)]  # a user's model by the path given


def test_the_demo_shows_it_beside_the_default_on_the_whole_photo(tmp_path):
    page = run_demo(output=tmp_path)  # `make demo`: the shipped model, the first bundled photo (256 px) at Q 10
    assert "the JPEG model (--checkpoint jpeg)" in page.read_text()
    with Image.open(tmp_path / "jpeg_full.png") as figure, Image.open(tmp_path / "colorization_full.png") as other:
        assert figure.size[0] == 4 * 256 and other.size[0] == 3 * 256  # only the JPEG's figure has the extra panel
        panels = pil_to_tensor(figure.crop((0, 0, 4 * 256, 256))).split(256, dim=2)
    shown, default, jpeg_model, original = panels
    # The default gains 0.49 dB over the file and leaves 87% of its excess blockiness, the JPEG model 0.89 dB, 46%.
    assert _psnr(default, original) > _psnr(shown, original)
    assert _psnr(jpeg_model, original) > _psnr(default, original) + 0.2
    assert blockiness(jpeg_model) - 1 < 0.6 * (blockiness(default) - 1)
