"""Benchmark tooling: the compiled training region has no graph breaks, compiled and eager nets agree, and
`run_bench` / `run_quality` / `run_profile` / `palette bench` write their tables (tiny settings on CPU)."""

import subprocess
import sys
import time

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from palette.bench import bench_config, peak_flops, run_bench, synthetic_batch, training_flops_per_image
from palette.bench_images import PROFILE_PARTS, Stopwatch, run_profile, run_quality
from palette.cli import main
from palette.config import config_from_dict
from palette.diffusion import masked_loss
from palette.network import PaletteNet
from palette.training import train

from conftest import save_tiny_model, tiny_values


def _tiny_net(**network) -> PaletteNet:
    config = config_from_dict({"network": {"preset": "tiny", **network}, "data": {"image_size": 16}})
    torch.manual_seed(0)
    net = PaletteNet.from_config(config)
    torch.nn.init.normal_(net.unet.conv_out.weight, std=0.05)  # the zero-initialised output would hide mismatches
    return net


def _inputs(seed: int = 1, batch: int = 2) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    noisy, condition, target = (torch.randn(batch, 3, 16, 16, generator=generator) for _ in range(3))
    mask = (torch.rand(batch, 1, 16, 16, generator=generator) > 0.5).float()
    return noisy, torch.rand(batch, generator=generator), condition, target, mask


def _loss(net, noisy, noise_level, condition, target, mask) -> torch.Tensor:
    """The compute of a training step: the network and the masked loss, reduced as the trainer reduces it."""
    return masked_loss(net(noisy, noise_level, condition), target, mask).mean()


@pytest.mark.parametrize("network", [{}, {"attention_resolutions": [8], "gradient_checkpointing": True}])
def test_training_step_traces_as_one_graph(network):
    net = _tiny_net(**network).train()
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(lambda *inputs: _loss(net, *inputs))(*_inputs())
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def test_compiled_net_matches_eager_in_outputs_and_gradients():
    # Inductor's decompositions and partitioner without its C++ code generation, which takes minutes on a CPU.
    net = _tiny_net().train()
    torch._dynamo.reset()
    compiled = torch.compile(net, backend="aot_eager_decomp_partition")
    for seed in (1, 2):  # a second call with other noise levels must reuse the graph and still be right
        inputs = _inputs(seed)
        results = []
        for forward in (net, compiled):
            net.zero_grad()
            output = forward(*inputs[:3])
            masked_loss(output, inputs[3], inputs[4]).mean().backward()
            results.append((output.detach(), [p.grad.clone() for p in net.parameters()]))
        (eager, eager_grads), (fused, fused_grads) = results
        torch.testing.assert_close(fused, eager, rtol=1e-3, atol=1e-3 * eager.abs().max())
        # Relative to the largest gradient: a conv bias followed by GroupNorm has a gradient of rounding noise.
        scale = max(grad.abs().max() for grad in eager_grads)
        for eager_grad, fused_grad in zip(eager_grads, fused_grads):
            torch.testing.assert_close(fused_grad, eager_grad, rtol=1e-3, atol=1e-3 * scale)


def test_training_flops_count_forward_and_backward_once_per_image():
    config = bench_config("tiny", 16, 4)
    net = PaletteNet.from_config(config)
    batch = synthetic_batch(config, 4, torch.device("cpu"))
    with FlopCounterMode(display=False) as counter:
        net(batch["target"], torch.full((4,), 0.5), batch["condition"])
    forward = counter.get_total_flops() / 4
    per_image = training_flops_per_image(net, config, batch, torch.device("cpu"))
    # Backward costs two forwards (input and weight gradients), less the input gradient of the first conv.
    assert 2.9 * forward < per_image < 3 * forward
    assert training_flops_per_image(net, config, synthetic_batch(config, 2, torch.device("cpu")),
                                    torch.device("cpu")) == per_image


def test_peak_flops_by_device_name():
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989.4e12  # SXM5
    assert peak_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_flops("Tesla T4") is None


def test_run_bench_quick_on_cpu_appends_the_expected_rows(image_folder, tmp_path):
    out = tmp_path / "BENCHMARKS.md"
    out.write_text("# Benchmarks\n\nEarlier text.\n")
    threads = torch.get_num_threads()
    # backend="eager" runs the compiled code paths with Dynamo's graphs but no code generation.
    rows = run_bench(preset="tiny", image_size=16, batch_size=4, device="cpu", samplers=("ddim:2", "dpmpp:2"),
                     backend="eager", data=image_folder, overrides=["data.num_workers=0"], quick=True, append_to=out)
    found = [(row["what"], row["mode"], row["batch"]) for row in rows]
    samples = [(f"sample {spec}, s/image", mode, batch)
               for mode in ("eager", "compiled") for batch in (1, 2) for spec in ("ddim:2", "dpmpp:2")]
    assert found == [
        ("training FLOP per image (forward + backward)", "counted", 4),
        ("training img/s, 16²", "eager", 4), ("training img/s, 16²", "eager, channels_last", 4),
        ("training img/s, 16²", "eager, 1 thread", 4), ("training img/s, 16²", "compiled", 4),
        ("ms per network evaluation", "eager", 1), ("ms per network evaluation", "eager", 8),
        ("ms per network evaluation", "compiled", 1), ("ms per network evaluation", "compiled", 8),
        *samples,
        ("training img/s, 16², with data loading", "eager, 0 worker(s)", 4),
        ("data loading: wait in next(loader) per step", "eager, 0 worker(s)", 4),
    ]
    assert rows[0]["value"] == pytest.approx(0.10774528)  # GFLOP counted by FlopCounterMode; the net fixes it
    assert all(0 < row["value"] < float("inf") for row in rows[1:])  # timings: measured, so only finite
    assert torch.get_num_threads() == threads  # the 1-thread row gives the threads back
    assert all(row["mfu"] is None and row["peak_memory_gib"] is None for row in rows)  # CUDA only
    text = out.read_text()
    assert text.startswith("# Benchmarks\n\nEarlier text.\n\n### ")  # appended, not overwritten
    assert "`palette bench --preset tiny --size 16 --batch-size 4 --device cpu " in text
    assert "graph breaks in the compiled training region (torch._dynamo.explain): 0" in text
    assert text.count("| ms per network evaluation | compiled |") == 2


def test_palette_bench_command_and_module_entry_point(tmp_path, capsys, monkeypatch):
    out = tmp_path / "BENCHMARKS.md"
    main(["bench", "--preset", "tiny", "--size", "16", "--batch-size", "2", "--device", "cpu", "--quick",
          "--no-compile", "--parts", "nfe", "--out", str(out)])
    assert out.read_text().count("| ms per network evaluation | eager |") == 2
    assert "| ms per network evaluation | eager | 8 |" in capsys.readouterr().out
    # `python -m palette bench ARGS` is `palette bench ARGS`, in a fresh interpreter: no double import, no warning.
    result = subprocess.run([sys.executable, "-W", "error", "-m", "palette", "bench", "--help"],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: palette bench") and result.stderr == ""


@pytest.mark.parametrize(("flag", "extra"), [("--steps", ["--parts", "train"]),
                                             ("--sample-batch", ["--parts", "sample"]),
                                             ("--count", ["--quality", "jpeg", "--data", "unused"])])
def test_a_count_below_one_is_one_line_naming_its_flag(flag, extra, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--preset", "tiny", "--size", "16", "--device", "cpu", "--no-compile", flag, "0",
              "--out", str(tmp_path / "B.md"), *extra])
    assert capsys.readouterr().err == f"palette bench: error: {flag} must be a positive integer, got 0\n"


def test_run_quality_compares_samplers_with_the_reference(image_folder, tmp_path):
    # Residual scales per task, as the shipped model has: every restore (warm-up included) must pass the task.
    values = tiny_values(image_folder, steps=2, checkpoint_every=2)
    values["diffusion"] = {"residual": True, "residual_scale": {"colorization": 1.4, "inpainting": 2.9,
                                                                "uncropping": 1.8, "jpeg": 4.8}}
    train(config_from_dict(values), tmp_path / "run", progress=False)
    out = tmp_path / "BENCHMARKS.md"
    rows = run_quality(tmp_path / "run", image_folder, task="inpainting", samplers=("ddim:2", "ddpm:10"),
                       reference="ddpm:10", device="cpu", batch_size=2, append_to=out)
    assert [(row["sampler"], row["steps"]) for row in rows] == [("ddpm", 10), ("ddim", 2), ("ddpm", 10)]
    # The same sampler and seed restore the same images: exactly no change against the reference.
    assert rows[2]["psnr"] == rows[0]["psnr"] and rows[2]["swd"] == rows[0]["swd"]
    assert rows[2]["psnr_change_percent"] == 0 and rows[2]["swd_change_percent"] == 0
    # Real measurements of a 2-step tiny model: finite, in the range of a poor restoration, and sampler-dependent.
    assert all(8 < row["psnr"] < 40 and 0 < row["swd"] < 1000 and row["seconds_per_image"] > 0 for row in rows)
    assert (rows[1]["psnr"], rows[1]["swd"]) != (rows[0]["psnr"], rows[0]["swd"])
    assert "| ddim | 2 |" in out.read_text()


def test_stopwatch_counts_a_nested_part_once():
    watch = Stopwatch()
    inner = watch.wrap("inner", lambda: time.sleep(0.05))

    def outer() -> None:
        time.sleep(0.05)
        inner()
    watch.wrap("outer", outer)()
    inner()
    assert 0.1 <= watch.seconds["outer"] < 0.2  # its own sleep and the nested call's
    assert 0.05 <= watch.seconds["inner"] < 0.1  # the call on its own only


def test_run_profile_times_every_part_of_palette_sample(tmp_path, image_folder):
    model = save_tiny_model(tmp_path)
    out = tmp_path / "BENCHMARKS.md"
    rows = run_profile(model, image_folder, "jpeg", sampler="ddim:3", device="cpu", append_to=out)
    parts = {row["part"]: row for row in rows}
    assert list(parts) == [*PROFILE_PARTS, "sampler and the rest", "total"]
    # Each wrapped function was reached through the name sample_folder calls: a part that was never timed is 0.
    assert all(parts[part]["seconds"] > 0 for part in PROFILE_PARTS), parts
    total = parts["total"]["seconds"]
    assert parts["sampler and the rest"]["seconds"] >= 0 and parts["total"]["share"] == 1
    assert sum(row["seconds"] for row in rows[:-1]) == pytest.approx(total)
    assert parts["total"]["seconds_per_image"] == pytest.approx(total / len(list(image_folder.iterdir())))
    text = out.read_text()
    assert "| network |" in text and "time outside the network:" in text and "--profile" in text
