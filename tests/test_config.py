import dataclasses
from pathlib import Path

import pytest

from palette.config import (NETWORK_PRESETS, ConfigError, NetworkConfig, apply_overrides, config_from_dict,
                            config_to_dict, load_config, save_config)

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


def test_every_bundled_config_loads():
    names = {p.stem for p in CONFIGS}
    assert {"colorization", "inpainting", "uncropping", "jpeg", "multitask", "tiny"} <= names
    for path in CONFIGS:
        config = load_config(path)
        assert config.data.tasks


def test_multitask_config_mixes_all_four_tasks_equally():
    config = load_config(Path(__file__).parent.parent / "configs" / "multitask.yaml")
    assert config.data.tasks == {"colorization": 1.0, "inpainting": 1.0, "uncropping": 1.0, "jpeg": 1.0}


def test_preset_fills_fields_and_explicit_keys_override():
    config = config_from_dict({"network": {"preset": "base", "dropout": 0.1}})
    assert config.network.base_channels == NETWORK_PRESETS["base"]["base_channels"] == 64
    assert config.network.dropout == 0.1


def test_network_defaults_are_the_preset_they_name():
    resolved = config_from_dict({}).network
    assert NetworkConfig().preset == resolved.preset == "small"
    for field in dataclasses.fields(NetworkConfig):
        assert getattr(NetworkConfig(), field.name) == getattr(resolved, field.name), field.name
    assert resolved.channel_mults == NETWORK_PRESETS["small"]["channel_mults"] == (1, 2, 2, 4)


def test_overrides_and_round_trip(tmp_path):
    path = Path(__file__).parent.parent / "configs" / "tiny.yaml"
    config = load_config(path, ["train.steps=7", "data.tasks={jpeg: 2}", "sampling.sampler=ddim"])
    assert config.train.steps == 7 and config.data.tasks == {"jpeg": 2.0} and config.sampling.sampler == "ddim"
    save_config(config, tmp_path / "resolved.yaml")
    assert load_config(tmp_path / "resolved.yaml") == config
    assert config_from_dict(config_to_dict(config)) == config


@pytest.mark.parametrize("values, words", [
    ({"train": {"stpes": 3}}, ["stpes", "steps"]),
    ({"trian": {}}, ["trian"]),
    ({"sampling": {"sampler": "euler"}}, ["sampling.sampler", "euler", "dpmpp"]),
    ({"diffusion": {"objective": "x0"}}, ["diffusion.objective", "regression"]),
    ({"train": {"steps": "many"}}, ["train.steps", "many"]),
    ({"network": {"preset": "huge"}}, ["network.preset", "huge", "paper"]),
    ({"data": {"tasks": {"deblur": 1}}}, ["deblur", "colorization"]),
    ({"data": {"image_size": 50}}, ["data.image_size", "50"]),
    ({"train": {"ema_decay": 1.0}}, ["train.ema_decay", "1.0"]),
    ({"diffusion": {"train_beta_start": 0.1, "train_beta_end": 0.01}}, ["diffusion.train_beta_start", "0.1"]),
    ({"diffusion": {"sample_beta_end": 1.5}}, ["diffusion.sample_beta_end", "1.5"]),
])
def test_bad_values_name_the_key(values, words):
    with pytest.raises(ConfigError) as error:
        config_from_dict(values)
    for word in words:
        assert word in str(error.value)


@pytest.mark.parametrize("key, value, bound", [
    ("train.log_every", 0, ">= 1"),
    ("train.checkpoint_every", 0, ">= 1"),
    ("train.sample_every", -5, ">= 1"),
    ("train.keep_checkpoints", 0, ">= 1"),
    ("train.steps", 0, ">= 1"),
    ("train.batch_size", -1, ">= 1"),
    ("train.lr", 0.0, "> 0"),
    ("train.lr", -1e-4, "> 0"),
    ("train.grad_clip", 0.0, "> 0"),
    ("train.warmup_steps", -1, ">= 0"),
    ("train.weight_decay", -0.1, ">= 0"),
    ("train.seed", -1, ">= 0"),
    ("data.num_workers", -2, ">= 0"),
    ("sampling.steps", 0, "from 1 to 1000"),
    ("diffusion.train_steps", 0, ">= 1"),
])
def test_out_of_range_numbers_name_the_key_and_the_bound(key, value, bound):
    section, name = key.split(".")
    with pytest.raises(ConfigError) as error:
        config_from_dict({section: {name: value}})
    assert str(error.value) == f"{key}: must be {bound}, got {value}"


def test_bad_override_and_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="train.bogus|bogus"):
        load_config(None, ["train.bogus=1"])
    with pytest.raises(ConfigError, match="section"):
        load_config(None, ["nosuch.steps=1"])
    with pytest.raises(ConfigError, match="missing.yaml"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {steps: [}")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(bad)


@pytest.mark.parametrize("key, text, shown", [
    ("train.lr", ".inf", "inf"),
    ("train.grad_clip", ".nan", "nan"),
    ("train.weight_decay", ".inf", "inf"),
    ("network.dropout", ".nan", "nan"),
    ("sampling.hole_colour_depth", ".inf", "inf"),
    ("diffusion.residual_scale.jpeg", ".inf", "inf"),
    ("data.tasks.jpeg", ".nan", "nan"),
    ("data.crop_scale", "[0.5, .nan]", "nan"),
])
def test_infinite_and_nan_numbers_name_the_key(key, text, shown):
    with pytest.raises(ConfigError) as error:
        load_config(None, [f"{key}={text}"])
    assert str(error.value) == f"{key}: must be a finite number, got {shown}"


def test_an_override_below_a_number_names_it_and_an_empty_section_is_the_defaults(tmp_path):
    with pytest.raises(ConfigError) as error:
        load_config(None, ["train.steps=5", "train.steps.x=1"])
    assert str(error.value) == "override 'train.steps.x=1': train.steps is not a section"
    resumed = config_to_dict(load_config(None))  # what `palette train --resume RUN --set ...` overrides
    with pytest.raises(ConfigError, match="^override 'train.steps.x=1': train.steps is not a section$"):
        apply_overrides(resumed, ["train.steps.x=1"])
    with pytest.raises(ConfigError, match="^override 'train.x.y=1': train is not a section$"):
        apply_overrides({"train": 3}, ["train.x.y=1"])
    empty = tmp_path / "empty.yaml"
    empty.write_text("train:\nsampling:\n")
    assert load_config(empty) == load_config(None)
    assert load_config(empty, ["train.steps=1", "sampling.task_steps.jpeg=5"]) == \
        load_config(None, ["train.steps=1", "sampling.task_steps.jpeg=5"])
    values = {"sampling": {"task_steps": {"jpeg": 5}}}
    assert apply_overrides(values, ["sampling.task_steps.inpainting=7"]) == \
        {"sampling": {"task_steps": {"jpeg": 5, "inpainting": 7}}}
    assert values == {"sampling": {"task_steps": {"jpeg": 5}}}  # the caller's mappings are left as they are


def test_residual_scales_name_registered_tasks_and_are_positive():
    assert config_from_dict({"diffusion": {"residual_scale": {"jpeg": 4.8}}}).diffusion.residual_scale == {"jpeg": 4.8}
    with pytest.raises(ConfigError, match="diffusion.residual_scale: unknown task 'deblur'"):
        config_from_dict({"diffusion": {"residual_scale": {"deblur": 2}}})
    with pytest.raises(ConfigError, match="diffusion.residual_scale.jpeg: must be > 0"):
        config_from_dict({"diffusion": {"residual_scale": {"jpeg": 0}}})


def test_rebalancing_names_registered_tasks_and_needs_a_residual_model():
    residual = {"residual": True, "residual_rebalance": {"colorization": 1.0}}
    assert config_from_dict({"diffusion": residual}).diffusion.residual_rebalance == {"colorization": 1.0}
    with pytest.raises(ConfigError, match="diffusion.residual_rebalance: unknown task 'deblur'"):
        config_from_dict({"diffusion": {"residual": True, "residual_rebalance": {"deblur": 1}}})
    with pytest.raises(ConfigError, match="diffusion.residual_rebalance.jpeg: must be >= 0"):
        config_from_dict({"diffusion": {"residual": True, "residual_rebalance": {"jpeg": -1}}})
    with pytest.raises(ConfigError, match="set diffusion.residual: true"):
        config_from_dict({"diffusion": {"residual_rebalance": {"colorization": 1.0}}})


def test_a_task_may_crop_at_its_own_scale():
    data = config_from_dict({"data": {"tasks": {"jpeg": 1}, "task_crop_scale": {"jpeg": [0.1, 1]}}}).data
    assert data.task_crop_scale == {"jpeg": (0.1, 1.0)} and data.crop_scale == (0.5, 1.0)
    with pytest.raises(ConfigError, match="data.task_crop_scale: unknown task 'deblur'"):
        config_from_dict({"data": {"task_crop_scale": {"deblur": [0.1, 1]}}})
    with pytest.raises(ConfigError, match=r"task_crop_scale.jpeg: expected 0 < low <= high <= 1, got \[0.5, 0.2\]"):
        config_from_dict({"data": {"task_crop_scale": {"jpeg": [0.5, 0.2]}}})


def test_task_steps_override_the_default_steps_per_task():
    sampling = config_from_dict({"sampling": {"steps": 20, "task_steps": {"jpeg": 1}}}).sampling
    assert [sampling.for_task("steps", task) for task in ("jpeg", "colorization", None)] == [1, 20, 20]
    with pytest.raises(ConfigError, match="sampling.task_steps.jpeg: must be from 1 to 1000"):
        config_from_dict({"sampling": {"task_steps": {"jpeg": 0}}})
    with pytest.raises(ConfigError, match="sampling.task_steps: unknown task 'deblur'"):
        config_from_dict({"sampling": {"task_steps": {"deblur": 3}}})


def test_guidance_weights_are_checked_per_task():
    sampling = config_from_dict({"sampling": {"task_guidance": {"colorization": 2.5}}}).sampling
    assert [sampling.for_task("guidance", task) for task in ("colorization", "jpeg", None)] == [2.5, 1.0, 1.0]
    with pytest.raises(ConfigError, match=r"sampling.task_guidance.colorization: must be from 1 \(off\) to 10"):
        config_from_dict({"sampling": {"task_guidance": {"colorization": 0.5}}})
    with pytest.raises(ConfigError, match="sampling.guidance: must be from 1"):
        config_from_dict({"sampling": {"guidance": 11}})
    with pytest.raises(ConfigError, match="sampling.task_guidance: unknown task 'deblur'"):
        config_from_dict({"sampling": {"task_guidance": {"deblur": 2}}})


def test_sdedit_strengths_are_checked_per_task():
    sampling = config_from_dict({"sampling": {"task_strength": {"inpainting": 0.25}}}).sampling
    assert (sampling.for_task("strength", "inpainting"), sampling.for_task("strength", "jpeg")) == (0.25, 1.0)
    assert sampling.resolve("inpainting") == (20, 1.0, 0.25)
    assert sampling.resolve("inpainting", steps=8, guidance=2.0, strength=0.5) == (8, 2.0, 0.5)  # given values win
    guided = config_from_dict({"sampling": {"task_strength": {"inpainting": 0.2},
                                            "task_guidance": {"inpainting": 1.5}}}).sampling
    assert guided.describe("inpainting") == "20 steps from its estimate re-noised 20%, guidance 1.5"
    assert guided.describe("jpeg") == "20 steps"
    assert config_from_dict({"sampling": {"steps": 1}}).sampling.describe(None) == "1 step"
    with pytest.raises(ConfigError, match=r"sampling.task_strength.inpainting: must be in \(0, 1\], got 0"):
        config_from_dict({"sampling": {"task_strength": {"inpainting": 0}}})
    with pytest.raises(ConfigError, match="sampling.strength: must be in"):
        config_from_dict({"sampling": {"strength": 1.5}})


def test_final_denoising_steps_are_timesteps_of_the_training_schedule_per_task():
    sampling = config_from_dict({"sampling": {"task_final_denoise": {"inpainting": 49}}}).sampling
    assert [sampling.for_task("final_denoise", task) for task in ("inpainting", "jpeg", None)] == [49, 0, 0]
    assert sampling.describe("inpainting") == "20 steps, then denoised at t = 49"
    with pytest.raises(ConfigError,
                       match=r"sampling.task_final_denoise.jpeg: must be from 0 \(off\) to 1999, got 2000"):
        config_from_dict({"sampling": {"task_final_denoise": {"jpeg": 2000}}})
    with pytest.raises(ConfigError, match=r"sampling.final_denoise: must be from 0 \(off\) to 99, got -1"):
        config_from_dict({"diffusion": {"train_steps": 100}, "sampling": {"final_denoise": -1}})


def test_keeping_the_estimates_colour_is_a_per_task_switch():
    sampling = config_from_dict({"sampling": {"task_estimate_chroma": {"uncropping": True}}}).sampling
    assert [sampling.for_task("estimate_chroma", task) for task in ("uncropping", "jpeg", None)] == [True, False, False]
    assert sampling.describe("uncropping") == "20 steps, colour from its estimate"
    with pytest.raises(ConfigError, match="sampling.task_estimate_chroma.jpeg: expected true or false, got 1"):
        config_from_dict({"sampling": {"task_estimate_chroma": {"jpeg": 1}}})
    with pytest.raises(ConfigError, match="sampling.task_estimate_chroma: unknown task 'deblur'"):
        config_from_dict({"sampling": {"task_estimate_chroma": {"deblur": True}}})


def test_the_chroma_filter_is_a_radius_per_task():
    sampling = config_from_dict({"sampling": {"task_chroma_filter": {"colorization": 1}}}).sampling
    assert [sampling.for_task("chroma_filter", task) for task in ("colorization", "jpeg", None)] == [1, 0, 0]
    assert sampling.describe("colorization") == "20 steps, colour smoothed (radius 1)"
    with pytest.raises(ConfigError, match=r"sampling.task_chroma_filter.colorization: must be from 0 \(off\) to 8"):
        config_from_dict({"sampling": {"task_chroma_filter": {"colorization": 9}}})
    with pytest.raises(ConfigError, match="sampling.chroma_filter: expected an integer, got 1.5"):
        config_from_dict({"sampling": {"chroma_filter": 1.5}})


def test_the_hole_colour_depth_is_per_task_and_not_negative():
    sampling = config_from_dict({"sampling": {"task_hole_colour_depth": {"inpainting": 12}}}).sampling
    assert [sampling.for_task("hole_colour_depth", task) for task in ("inpainting", "uncropping")] == [12, 0]
    assert sampling.describe("inpainting") == "20 steps, colour smoothed in holes 12 px deep or more"
    with pytest.raises(ConfigError, match=r"sampling.task_hole_colour_depth.inpainting: must be 0 \(off\) or more"):
        config_from_dict({"sampling": {"task_hole_colour_depth": {"inpainting": -1}}})
