"""LLCConfig validation: every bad value is refused with a message naming the field."""

from __future__ import annotations

import pytest

from estimator import LLCConfig


def test_defaults_are_valid_and_automatic():
    config = LLCConfig()
    assert config.sampler == "sgld"
    assert config.epsilon is None and config.nbeta is None and config.num_draws is None
    assert config.num_chains >= 2


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("sampler", "hmc"),
        ("epsilon", 0.0),
        ("epsilon", -1e-4),
        ("epsilon", float("nan")),
        ("epsilon", "small"),
        ("gamma", 0),
        ("gamma", float("inf")),
        ("nbeta", -3.0),
        ("num_chains", 0),
        ("num_chains", 2.5),
        ("num_chains", True),
        ("num_draws", 0),
        ("num_burnin_steps", -1),
        ("num_steps_bw_draws", 0),
        ("batch_size", 0),
        ("seed", -1),
        ("seed", 1.5),
        ("device", "tpu"),
        ("device", "cuda:x"),
        ("dtype", "float16"),
        ("chain_mode", "parallel"),
        ("max_chains_per_chunk", 0),
        ("target_bias", 0.0),
        ("target_bias", 0.9),
        ("rhat_threshold", 1.0),
        ("min_ess", -1),
        ("mala_band", (0.9, 0.5)),
        ("mala_band", (0.5,)),
    ],
)
def test_bad_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=rf"LLCConfig\.{field}"):
        LLCConfig(**{field: value})


def test_good_values_accepted():
    config = LLCConfig(
        sampler="rmsprop_sgld",
        epsilon=1e-4,
        gamma=100,
        nbeta=50,
        num_chains=2,
        num_draws=10,
        num_burnin_steps=0,
        num_steps_bw_draws=3,
        batch_size=32,
        seed=7,
        device="cpu",
        dtype="float64",
        chain_mode="sequential",
    )
    assert config.replace(seed=8).seed == 8


def test_from_dict_round_trip_and_unknown_fields():
    config = LLCConfig(epsilon=1e-3, num_chains=3, mala_band=(0.5, 0.99))
    assert LLCConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown LLCConfig field.*lr"):
        LLCConfig.from_dict({"lr": 1e-3})


def test_the_config_and_its_names_import_without_torch():
    """The API checks job configs with the estimator's own rules; that must not load torch."""
    import subprocess
    import sys

    code = ("import sys, estimator; from estimator.config import LLCConfig, LOSSES, SAMPLERS, constant_defaults; "
            "LLCConfig(num_chains=2); print('torch' in sys.modules); "
            "from estimator import estimate_llc; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]  # torch comes with the first torch-heavy name


def test_the_estimators_tables_are_keyed_by_the_configs_names():
    from estimator.config import LOSSES, SAMPLERS, constant_defaults
    from estimator.losses import LOSSES as LOSS_FUNCTIONS
    from estimator.samplers import KERNELS

    assert tuple(KERNELS) == SAMPLERS and tuple(LOSS_FUNCTIONS) == LOSSES
    defaults = constant_defaults()
    assert defaults["num_chains"] == LLCConfig().num_chains and defaults["mala_band"] == [0.8, 1.0]
    assert "epsilon" not in defaults  # resolved from the model and data, not a constant
