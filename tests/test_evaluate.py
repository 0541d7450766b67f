"""Metrics on cases with known answers, weights round trips, and tiny end-to-end runs (random weights, offline).

The end-to-end golden numbers were recorded from the implementation that the metrics/ split moved unchanged."""

from __future__ import annotations

import json
import math
import socket
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from palette import evaluate as ev
from palette import metrics
from palette.metrics.folders import FolderMismatchError, load_labels, match_predictions
from palette.metrics.networks import MissingWeightsError
from palette.imageio import save_image

SIZE = 32
COUNT = 4
COLOURFULNESS_TARGETS = 85.053198  # mean colourfulness of the `folders` targets, and of their noisy samples 0
COLOURFULNESS_NOISY = 92.480366


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Two threads on two shared cores are ~5x slower than one for these small convolutions."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """Any download or socket connection fails the test; the hub cache is an empty folder."""

    def refuse(*args, **kwargs):
        raise AssertionError("evaluation tried to use the network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))


def smooth_images(count: int, size: int, seed: int) -> torch.Tensor:
    """Natural-ish test images in [-1, 1]: upsampled noise, so SSIM and the pyramid see structure."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 3, size // 4, size // 4, generator=generator)
    fine = torch.rand(count, 3, size, size, generator=generator)
    images = nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    return (0.8 * images + 0.2 * fine) * 2 - 1


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> Path:
    """targets/ (4 images), noisy/ (2 different noisy samples each), copies/ (2 exact copies each)."""
    root = tmp_path_factory.mktemp("folders")
    targets = smooth_images(COUNT, SIZE, seed=0)
    generator = torch.Generator().manual_seed(1)
    for index, target in enumerate(targets):
        save_image(target, root / "targets" / f"img{index}.png")
        for k in range(2):
            noisy = (target + 0.15 * torch.randn(target.shape, generator=generator)).clamp(-1, 1)
            save_image(noisy, root / "noisy" / f"img{index}_{k}.png")
            save_image(target, root / "copies" / f"img{index}_{k}.png")
    return root


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, Path]:
    """Random weights in the real file layouts; the ResNet always predicts class 7."""
    root = tmp_path_factory.mktemp("weights")
    files = {"inception": root / "pt_inception-2015-12-05-6726825d.pth", "resnet50": root / "resnet50.pth",
             "lpips": root / "lpips.safetensors"}
    torch.save(metrics.random_fid_inception_state(seed=1), files["inception"])
    torch.manual_seed(0)
    resnet = torchvision.models.resnet50(weights=None)
    with torch.no_grad():
        resnet.fc.weight.zero_()
        resnet.fc.bias.zero_()
        resnet.fc.bias[7] = 10.0
    torch.save(resnet.state_dict(), files["resnet50"])
    from safetensors.torch import save_file

    save_file(metrics.LPIPS().state_dict(), str(files["lpips"]))
    return files


# ------------------------------------------------------------------------------------ pixel metrics


def test_psnr_of_a_known_error():
    """An exact +-delta error pattern has MSE = delta^2, so PSNR = 20 log10(1 / delta) on [0, 1]."""
    target = torch.rand(2, 3, 16, 16) * 0.6 + 0.2
    delta = 0.05
    signs = (torch.arange(16 * 16).view(16, 16) % 2 * 2 - 1).float()
    pred = target + delta * signs
    assert metrics.psnr(pred, target) == pytest.approx([20 * math.log10(1 / delta)] * 2, abs=1e-4)
    assert metrics.psnr(target, target) == pytest.approx([metrics.PSNR_CAP_DB] * 2)
    assert metrics.l1_error(pred, target) == pytest.approx([delta] * 2, abs=1e-6)


def test_ssim_is_one_for_itself_lower_with_noise_and_matches_torchmetrics():
    from torchmetrics.functional.image import structural_similarity_index_measure

    images = (smooth_images(2, 32, seed=3) + 1) / 2
    noisy = (images + 0.1 * torch.randn(images.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    assert metrics.ssim(images, images) == pytest.approx([1.0, 1.0], abs=1e-6)
    ours = metrics.ssim(noisy, images)
    assert (ours < 0.95).all()
    # torchmetrics pads (reflect) and averages the whole map; Wang et al.'s valid region is its centre
    _, full_map = structural_similarity_index_measure(noisy, images, data_range=1.0, return_full_image=True)
    assert ours == pytest.approx(full_map[..., 5:-5, 5:-5].mean((1, 2, 3)).tolist(), abs=1e-5)


def test_colourfulness_of_hand_made_images():
    """Hasler & Süsstrunk's M on 0..255: rg = R-G, yb = (R+G)/2 - B, M = σ_rgyb + 0.3 μ_rgyb."""
    gray = torch.full((1, 3, 4, 4), 0.4)
    red = torch.zeros(1, 3, 4, 4)
    red[:, 0] = 1  # rg = 255 and yb = 127.5 everywhere: no spread, M = 0.3 sqrt(255² + 127.5²)
    halves = torch.zeros(1, 3, 4, 4)
    halves[:, 0, :2] = 1  # top red, bottom green: rg = ±255 (σ 255, μ 0), yb = 127.5 (σ 0)
    halves[:, 1, 2:] = 1
    assert metrics.colourfulness(torch.cat([gray, red, halves])).tolist() == pytest.approx(
        [0.0, 0.3 * math.hypot(255, 127.5), 255 + 0.3 * 127.5], abs=1e-9)


# ------------------------------------------------------------------------------- set-level metrics


def test_frechet_distance_matches_the_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    var1, var2 = rng.uniform(0.5, 2, size=6), rng.uniform(0.5, 2, size=6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(var1 + var2 - 2 * np.sqrt(var1 * var2))
    assert metrics.frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2)) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("count", [8, 40])  # fewer samples than dimensions (exact low-rank path), and more
def test_fid_from_features_agrees_with_sqrtm_and_torchmetrics(count):
    from torchmetrics.image.fid import FrechetInceptionDistance

    class Given(nn.Module):
        num_features = 24

        def forward(self, features):
            return features

    generator = torch.Generator().manual_seed(count)
    real = torch.randn(count, 24, generator=generator, dtype=torch.float64)
    fake = 0.8 * torch.randn(count, 24, generator=generator, dtype=torch.float64) + 0.3
    ours = metrics.fid_from_features(real, fake)
    by_sqrtm = metrics.frechet_distance(*metrics.feature_statistics(real), *metrics.feature_statistics(fake))
    metric = FrechetInceptionDistance(feature=Given())
    metric.update(real, real=True)
    metric.update(fake, real=False)
    assert ours == pytest.approx(by_sqrtm, rel=1e-6)
    assert ours == pytest.approx(float(metric.compute()), rel=1e-6)
    assert metrics.fid_from_features(real, real) == pytest.approx(0.0, abs=1e-6)


def test_inception_score_of_known_classifiers():
    """Uniform logits: p(y|x) = p(y), KL 0, IS 1. Confident and balanced over C classes: IS = C.

    Half the images at p(y|x) = (3/4, 1/4), half at (1/4, 3/4): p(y) = (1/2, 1/2) and
    KL = 3/4 ln(3/2) + 1/4 ln(1/2) for every image, so IS = 1.5^(3/4) / 2^(1/4) = 1.1397...
    """
    assert metrics.inception_score(torch.zeros(20, 1008))[0] == pytest.approx(1.0, abs=1e-9)
    confident = torch.full((20, 5), -50.0)
    confident[torch.arange(20), torch.arange(20) % 5] = 50.0
    assert metrics.inception_score(confident, splits=1)[0] == pytest.approx(5.0, rel=1e-6)
    leaning = torch.zeros(20, 2, dtype=torch.float64)
    leaning[torch.arange(20), torch.arange(20) % 2] = math.log(3)  # softmax (3/4, 1/4)
    assert metrics.inception_score(leaning, splits=1) == (pytest.approx(1.5**0.75 / 2**0.25, rel=1e-9), None)


def unbiased_mmd2(real: np.ndarray, fake: np.ndarray) -> float:
    """Binkowski et al. 2018, Eq. 4 with the cubic kernel k(x, y) = (x.y / d + 1)^3, written out."""
    dim, count = real.shape[1], len(real)
    kernel = lambda a, b: (a @ b.T / dim + 1) ** 3  # noqa: E731
    k_rr, k_ff, k_rf = kernel(real, real), kernel(fake, fake), kernel(real, fake)
    off_diagonal = (k_rr.sum() - np.trace(k_rr) + k_ff.sum() - np.trace(k_ff)) / (count * (count - 1))
    return float(off_diagonal - 2 * k_rf.mean())


def test_kid_adapts_its_subset_size_and_is_the_unbiased_mmd():
    """With the subset size shrunk to the set size every subset is the whole set: one MMD², std 0."""
    generator = torch.Generator().manual_seed(0)
    real = torch.randn(5, 16, generator=generator, dtype=torch.float64)
    for fake in (real.clone(), real + 2.0):
        mean, std, size = metrics.kernel_inception_distance(real, fake)
        assert size == 5 and std == pytest.approx(0, abs=1e-12)
        assert mean == pytest.approx(unbiased_mmd2(real.numpy(), fake.numpy()), rel=1e-9)


def test_swd_is_zero_for_identical_sets_and_grows_with_blur():
    from torchvision.transforms.v2.functional import gaussian_blur

    images = torch.rand(8, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    same = metrics.sliced_wasserstein_distance(images, images.clone())
    assert list(same["levels"]) == ["64", "32", "16"]  # coarsest level >= 16 px
    assert same["value"] == 0.0
    mild = metrics.sliced_wasserstein_distance(gaussian_blur(images, [7, 7], [0.6, 0.6]), images)
    strong = metrics.sliced_wasserstein_distance(gaussian_blur(images, [7, 7], [1.5, 1.5]), images)
    assert 0 < mild["value"] < strong["value"]


# -------------------------------------------------------------------------------------------- weights


def test_fid_inception_file_round_trip_matches_torch_fidelity(weights, tmp_path, monkeypatch):
    """Our loader gives the features of torch-fidelity's own loader for the same file, and finds the hub cache."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    path = weights["inception"]
    theirs = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                         feature_extractor_weights_path=str(path))
    ours = metrics.fid_inception(metrics.load_state_dict_file(path))
    image = torch.randint(0, 256, (1, 3, 48, 48), dtype=torch.uint8)
    with torch.inference_mode():
        for mine, reference in zip(ours(image), theirs(image)):
            assert torch.equal(mine, reference)
    cache = tmp_path / "torch_home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / path.name).symlink_to(path)
    assert metrics.find_weights("inception", None).path == cache / path.name


def test_resnet50_and_googlenet_files_round_trip(weights, tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    resnet = torchvision.models.resnet50(weights=None)
    resnet.load_state_dict(torch.load(weights["resnet50"], weights_only=True))
    resnet.eval()
    save_file(resnet.state_dict(), str(tmp_path / "resnet50.safetensors"))
    googlenet = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=True).eval()
    torch.save(googlenet.state_dict(), tmp_path / "googlenet.pth")  # released files carry the aux heads
    image = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        expected = resnet(image)
        for path in (weights["resnet50"], tmp_path / "resnet50.safetensors"):
            assert torch.equal(metrics.resnet50_classifier(metrics.load_state_dict_file(path))(image), expected)
        googlenet.fc = nn.Identity()
        googlenet.transform_input = True
        loaded = metrics.googlenet_features(metrics.load_state_dict_file(tmp_path / "googlenet.pth"))
        assert torch.equal(loaded(image), googlenet(image))


def test_a_requested_metric_without_weights_names_the_flag_and_file(folders, tmp_path):
    with pytest.raises(MissingWeightsError, match="--inception-weights"):
        ev.evaluate_folders(folders / "noisy", folders / "targets", metrics=["fid"])
    missing = tmp_path / "nowhere" / "resnet.pth"
    with pytest.raises(FileNotFoundError, match=str(missing)) as error:
        ev.evaluate_folders(folders / "noisy", folders / "targets", metrics=["l1"], resnet50_weights=missing)
    assert "--resnet50-weights" in str(error.value)
    with pytest.raises(ValueError, match="unknown metric 'fdi'"):
        ev.evaluate_folders(folders / "noisy", folders / "targets", metrics=["fdi"])


# A metric that loads each kind of weights (ca also reads the labels).
WEIGHTS_USES = {"inception": ["fid"], "resnet50": ["ca"], "inception_v1": ["pd"], "lpips": ["diversity_lpips"]}


@pytest.mark.parametrize(("kind", "first_missing"), [
    ("inception", "Conv2d_1a_3x3.conv.weight"), ("resnet50", "conv1.weight"), ("inception_v1", "conv1.conv.weight"),
    ("lpips", "features.0.weight")])
def test_a_weights_file_that_does_not_load_names_the_file_and_the_flag(folders, tmp_path, kind, first_missing):
    """A file torch.load fails on (UnpicklingError, KeyError ...) and another network's safetensors: one line each,
    the misfit cut to 120 characters."""
    from safetensors.torch import save_file

    junk, other = tmp_path / "junk.pth", tmp_path / "other.safetensors"
    junk.write_bytes(b"not weights\n")
    save_file({"conv.weight": torch.zeros(1, 1, 1, 1)}, str(other))
    (tmp_path / "labels.txt").write_text("img0 7\nimg1 7\nimg2 3\nimg3 3\n")
    spec = metrics.WEIGHTS_KINDS[kind]
    assert spec.flag == f"--{kind.replace('_', '-')}-weights"
    unreadable, misfit = "not a weights file safetensors or torch can read", "does not fit the network"
    for path, words in ((junk, unreadable), (other, misfit)):
        with pytest.raises(ValueError) as error:
            ev.evaluate_folders(folders / "noisy", folders / "targets", metrics=WEIGHTS_USES[kind],
                                labels=tmp_path / "labels.txt", **{f"{kind}_weights": path})
        head = f"{path}: {words} ({spec.flag}: {spec.description})"
        assert str(error.value).startswith(head) and "\n" not in str(error.value)
    detail = str(error.value).removeprefix(head + ": ")
    assert detail.startswith(f'Missing key(s) in state_dict: "{first_missing}", ') and len(detail) <= 120


def test_unmatched_files_are_named(folders, tmp_path):
    save_image(torch.zeros(3, 8, 8), tmp_path / "pred" / "img0.png")
    save_image(torch.zeros(3, 8, 8), tmp_path / "pred" / "stray_3.png")
    with pytest.raises(FolderMismatchError, match="stray_3.png") as error:
        match_predictions(tmp_path / "pred", folders / "targets")
    assert "img1" in str(error.value) and "img0" not in str(error.value)


def test_labels_from_text_and_json(tmp_path):
    (tmp_path / "labels.txt").write_text("# stem class\nimg0 7\nimg1,3\n")
    (tmp_path / "labels.json").write_text(json.dumps({"img0": 7, "img1": "3"}))
    assert load_labels(tmp_path / "labels.txt") == load_labels(tmp_path / "labels.json") == {"img0": 7, "img1": 3}


# -------------------------------------------------------------------------------------- end to end


def test_default_metrics_without_weights(folders):
    """Golden numbers on the noisy folder; L1 and PSNR sit where Gaussian noise of std 0.15 puts them."""
    results = ev.evaluate_folders(folders / "noisy", folders / "targets", model="noisy", task="inpainting")
    values = {name: ev.headline_value(entry) for name, entry in results["metrics"].items()}
    assert (results["num_images"], results["samples_per_input"]) == (COUNT, 2)
    assert list(values) == ["l1", "psnr", "ssim", "colourfulness", "colourfulness_ratio", "swd",
                            "fid_proxy_random_inception", "diversity_ssim"]
    # E|N(0, 0.15)| / 2 = 0.0598 on [0, 1] (clipping at 0 and 1 trims it); MSE 0.075² gives 22.50 dB
    assert values["l1"] == pytest.approx(0.05966478, rel=1e-6)
    assert values["psnr"] == pytest.approx(22.506936, rel=1e-6)
    assert results["metrics"]["psnr"]["ci95"] == pytest.approx(0.152645, rel=1e-4)
    assert values["ssim"] == pytest.approx(0.81743638, rel=1e-6)
    assert values["colourfulness"] == pytest.approx(COLOURFULNESS_NOISY, rel=1e-6)
    assert values["colourfulness_ratio"] == pytest.approx(COLOURFULNESS_NOISY / COLOURFULNESS_TARGETS, rel=1e-6)
    assert results["metrics"]["swd"]["levels"] == pytest.approx({"32": 67.214519, "16": 38.655695}, rel=1e-5)
    assert values["fid_proxy_random_inception"] == pytest.approx(0.77761589, rel=1e-5)
    assert values["diversity_ssim"] == pytest.approx(0.68860784, rel=1e-6)  # two different noisy samples
    assert set(results["skipped"]) == {"fid", "is", "kid", "pd", "ca", "diversity_lpips"}
    assert "--inception-weights" in results["skipped"]["fid"] and "--labels" in results["skipped"]["ca"]
    assert results["weights"] == {} and results["model"] == "noisy"
    json.dumps(results, allow_nan=False)
    table = ev.format_table(results)
    assert "fid_proxy_random_inception" in table and "skipped" in table
    assert f"{'ssim':<28} 0.8174 ± 0.0052" in table


def test_all_metrics_on_exact_copies(folders, weights, tmp_path):
    """Predictions equal to their targets: every distance is 0 and every similarity is perfect."""
    (tmp_path / "labels.txt").write_text("img0 7\nimg1 7\nimg2 3\nimg3 3\n")
    stats = tmp_path / "stats" / "targets.npz"
    results = ev.evaluate_folders(
        folders / "copies", folders / "targets", inception_weights=weights["inception"],
        resnet50_weights=weights["resnet50"], lpips_weights=weights["lpips"], labels=tmp_path / "labels.txt",
        save_stats=stats, batch_size=3)
    values = {name: ev.headline_value(entry) for name, entry in results["metrics"].items()}
    assert results["skipped"] == {}
    assert values["l1"] == 0 and values["psnr"] == metrics.PSNR_CAP_DB
    assert values["ssim"] == pytest.approx(1.0) and values["diversity_ssim"] == pytest.approx(1.0)
    assert values["colourfulness"] == pytest.approx(COLOURFULNESS_TARGETS, rel=1e-6)
    assert values["colourfulness_ratio"] == 1
    assert values["diversity_lpips"] == 0 and values["swd"] == 0 and values["pd"] == 0
    assert values["fid"] == pytest.approx(0, abs=1e-6)
    assert values["fid_proxy_random_inception"] == pytest.approx(0, abs=1e-6)
    assert values["ca"] == 0.5  # the ResNet always says 7; half the labels are 7
    # 4 images in min(10, 4) splits: one image per split is its own marginal, KL 0, so IS is exactly 1
    assert results["metrics"]["is"] == {"mean": pytest.approx(1.0, abs=1e-9), "std": pytest.approx(0, abs=1e-9),
                                        "splits": COUNT}
    assert results["metrics"]["kid"]["subset_size"] == COUNT
    assert set(results["weights"]) == {"inception", "resnet50", "lpips"}
    assert results["weights"]["inception"]["sha256"] == metrics.file_sha256(weights["inception"])
    assert any("not the standard FID Inception" in note for note in results["notes"])

    # FID against the saved target statistics is the FID against the targets themselves.
    against_stats = ev.evaluate_folders(folders / "noisy", folders / "targets", metrics=["fid", "fid_reference"],
                                        inception_weights=weights["inception"], reference_stats=stats)
    fid = against_stats["metrics"]["fid"]["value"]
    assert fid == pytest.approx(1.7176340, rel=1e-5)
    assert against_stats["metrics"]["fid_reference"]["value"] == pytest.approx(fid, rel=1e-9)


def test_known_region_l1_uses_the_degrade_layout(tmp_path):
    """Inputs keep the target outside the mask; a prediction off by 0.5 (in [0,1]) only inside gives 0.

    The target lies in [0, 1] (of [-1, 1]), so target - 1 needs no clipping: L1 = 0.5 x 64/256 of the pixels.
    """
    target = (smooth_images(1, 16, seed=5)[0] + 1) / 2
    mask = torch.zeros(1, 16, 16)
    mask[:, 4:12, 4:12] = 1
    save_image(target, tmp_path / "targets" / "a.png")
    save_image(target * (1 - mask), tmp_path / "inputs" / "a.png")  # mid-gray hole
    save_image(mask * 2 - 1, tmp_path / "masks" / "a.png")
    save_image(target - mask, tmp_path / "pred" / "a.png")
    results = ev.evaluate_folders(tmp_path / "pred", tmp_path / "targets", input_dir=tmp_path / "inputs",
                                  metrics=["known_region_l1", "l1"])
    assert results["metrics"]["known_region_l1"]["mean"] == pytest.approx(0, abs=1e-6)
    assert results["metrics"]["l1"]["mean"] == pytest.approx(0.5 * 64 / 256, abs=0.5 / 255)  # 8-bit rounding
