"""Config validation at the boundary: round trips, exact numbers, and one clear message per bad field."""

import json
from fractions import Fraction

import pytest
from conftest import tiny_config_json

from backend import core, export, settings
from backend.config import from_query, loads, parse_config, to_query
from backend.errors import ConfigError


def test_defaults_are_the_papers_setting():
    cfg = parse_config({"setting": "linear_regression"})
    assert cfg.n == 500 and cfg.p == 8 and cfg.feature_names[-1] == "intercept"
    assert cfg.lr.kind == "inverse" and cfg.lr.c == Fraction(1, 2) and cfg.lr.alphas(2) == [0.5, 0.25]
    assert cfg.sampler == "without_replacement"


def test_json_and_query_round_trip():
    cfg = parse_config({"steps": 17, "batch_sizes": [3, 5], "lr": {"schedule": "inverse_offset", "c": "0.3", "t0": 4},
                        "w0": {"seed": 2, "scale": 0.5}})
    assert parse_config(cfg.to_json()) == cfg
    assert parse_config(from_query(to_query(cfg))) == cfg
    assert cfg.lr.alpha(0) == Fraction(3, 10) / 5


def test_exact_strings_and_json_decimals_are_read_exactly():
    raw = loads('{"standardize": false, "w0": [0, 0, 0, 0, 0, 0, 0, 0.92], "lr": {"schedule": "constant", "c": 0.1}}')
    cfg = parse_config(raw)
    assert cfg.exact and cfg.lr.c == Fraction(1, 10) and cfg.w0_values[-1] == Fraction(23, 25)
    assert not parse_config({}).exact  # standardized data involve square roots
    tiny = parse_config(tiny_config_json())
    assert tiny.exact and tiny.X[1, 1] == Fraction(1, 2)


@pytest.mark.parametrize("raw,field", [
    ({"steps": -1}, "steps"),
    ({"steps": 1.5}, "steps"),
    ({"steps": "many"}, "steps"),
    ({"batch_sizes": [0]}, "batch_sizes[0]"),
    ({"batch_sizes": [501]}, "batch_sizes"),
    ({"batch_sizes": []}, "batch_sizes"),
    ({"replicas": 1}, "replicas"),
    ({"replicas": 10**9}, "replicas"),
    ({"lr": {"schedule": "cosine"}}, "lr.schedule"),
    ({"lr": {"c": -0.1}}, "lr.c"),
    ({"lr": {"c": "nan"}}, "lr.c"),
    ({"lr": {"c": "inf"}}, "lr.c"),
    ({"lr": {"schedule": "inverse", "t0": 3}}, "lr.t0"),
    ({"w0": [1, 2]}, "w0"),
    ({"w0": {"seed": -1}}, "w0.seed"),
    ({"w0": "zeros"}, "w0"),
    ({"sampler": "poisson"}, "sampler"),
    ({"device": "tpu"}, "device"),
    ({"dataset": {"name": "mnist"}}, "dataset.name"),
    ({"dataset": {"X": [[1, 2], [3]], "y": [1, 2]}}, "dataset.X"),
    ({"dataset": {"X": [[1], [2]], "y": [1]}}, "dataset.y"),
    ({"dataset": {"X": [[1], ["x"]], "y": [1, 2]}}, "dataset.X[1][0]"),
    ({"dataset": {"X": [[1]], "y": [1]}}, "dataset.X"),
    ({"dataset": {"name": "synthetic", "n": 1}}, "dataset.n"),
    ({"standardize": "yes"}, "standardize"),
    ({"colour": "red"}, "colour"),
    ({"setting": "quantum"}, "setting"),
    ({"dataset": {"X": [[1], [1], [1]], "y": [1, 2, 3]}}, "standardize"),
])
def test_each_bad_field_is_named(raw, field):
    with pytest.raises(ConfigError) as err:
        parse_config(raw)
    assert err.value.field == field
    assert str(err.value).startswith(field)


def test_not_json():
    with pytest.raises(ConfigError) as err:
        loads("{steps: 3")
    assert err.value.field == "config"


def test_one_preset_mechanism_for_every_setting():
    """{"setting": s, "preset": name} is the preset's fields over the defaults, and fields given beside it win."""
    from backend import api

    for s in api.registry():
        for name in s["presets"]:
            if s["name"] == "mlp" and name == "paper":
                continue  # Fashion-MNIST (a Debian package) may be absent
            cfg = parse_config({"setting": s["name"], "preset": name, "seed": 7})
            assert cfg.seed == 7
    fig2b = parse_config({"preset": "paper (Figure 2b)"})
    assert fig2b.steps == 40 and len(fig2b.batch_sizes) == 21 and fig2b.replicas == 200_000
    assert parse_config({"setting": "deep_linear", "preset": "paper (Figure 3)"}).dims == (64, 256, 128)
    assert parse_config({"setting": "sequence"}) == parse_config({"setting": "sequence", "preset": "laptop"})
    with pytest.raises(ConfigError, match="^preset: expected one of"):
        parse_config({"setting": "deep_linear", "preset": "huge"})


def test_every_setting_round_trips_through_the_url():
    """to_query / from_query reproduce each setting's config, text fields (tokenizer, sampler, dtype) included."""
    from backend.config import from_query, to_query

    from backend import settings

    for raw in [{"setting": name} for name in settings.SETTINGS] + [{"setting": "sequence", "tokenizer": "char"}]:
        cfg = parse_config(raw)
        assert parse_config(from_query(to_query(cfg))) == cfg


@pytest.mark.parametrize("setting,field", [("mlp", "distortion"), ("sequence", "optimizer"), ("mlp", "lr"),
                                           ("linear_regression", "lr"), ("deep_linear", "lr")])
def test_a_partial_object_takes_the_rest_from_the_defaults(setting, field):
    """DEFAULTS is the one statement of the defaults: an object given with one of its keys gets the page's values for
    the others (the MLP fell back to distortion α/σ = 8/2, the sequence model to lr 1e-3 and no warm-up, the MLP's lr to the
    inverse schedule with c = 1/2 while its default is constant 0.05)."""
    default = parse_config({"setting": setting}).to_json()[field]
    for key, value in default.items():
        assert parse_config({"setting": setting, field: {key: value}}).to_json()[field] == default, key


@pytest.mark.parametrize("raw", [
    {"setting": "linear_regression", "batch_schedule": [[8, 5], [64, 7]],
     "optimizer": {"name": "sgd", "momentum": "1/2", "nesterov": True}},
    {"setting": "deep_linear", "batch_schedule": [[4, 3], [16, 2]], "optimizer": {"name": "sgd", "momentum": "0.9"}},
    {"setting": "mlp", "optimizer": {"name": "adam", "betas": ["0.8", "0.99"]}},
    {"setting": "sequence", "optimizer": {"name": "sgd", "momentum": "0.9", "lr": "0.01"}},
])
def test_a_link_carries_every_field_the_setting_accepts(raw):
    """batch_schedule and optimizer (fields that are not in every setting's DEFAULTS) survive the URL round trip."""
    cfg = parse_config(raw)
    back = from_query(to_query(cfg))
    assert set(back) == set(cfg.to_json())
    assert parse_config(back) == cfg


def test_a_links_unknown_field_is_refused_in_one_line_not_dropped():
    for params in ({"colour": "red"}, {"colour": "[1,2]"}, {"setting": "mlp", "tokenizer": "char"}):
        with pytest.raises(ConfigError) as err:
            parse_config(from_query(params))
        field = next(k for k in params if k != "setting")
        assert err.value.field == field and "unknown field" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("raw", [
    {"setting": "linear_regression", "optimizer": {"name": "sgd", "momentum": 0.8}, "lr": {"schedule": "constant",
                                                                                           "c": 0.05}},
    {"setting": "deep_linear", "optimizer": {"name": "sgd", "momentum": 0.8, "weight_decay": 0.01}},
    {"setting": "mlp", "optimizer": {"name": "adam", "betas": [0.8, 0.99], "eps": 1e-7}, "lr": 0.1},
    {"setting": "mlp", "optimizer": {"name": "sgd", "momentum": 0.8}},
    {"setting": "sequence", "optimizer": {"name": "adam", "betas": [0.8, 0.95], "lr": 0.001}},
    {"setting": "sequence", "optimizer": {"beta1": 0.8, "lr": 0.002}},
])
def test_float_numbers_come_back_from_a_link_as_the_same_config_and_key(raw):
    """A float (0.8 from a widget or Python) is not turned into the rational 4/5 by the URL: same config, same key."""
    import torch

    from backend.settings.base import simulation_key

    cfg = parse_config(raw)
    back = parse_config(from_query(to_query(cfg)))
    assert back == cfg and back.to_json() == cfg.to_json()
    assert simulation_key(back, torch.device("cpu")) == simulation_key(cfg, torch.device("cpu"))
    exact = parse_config({"setting": "linear_regression", "optimizer": {"name": "sgd", "momentum": "4/5"}})
    assert parse_config(from_query(to_query(exact))) == exact  # exact numbers stay exact


def _with_float_lr(setting: str) -> dict:
    """The setting's defaults (as to_json writes them) with the float learning rate 0.8 (and, for linear
    regression, a float in w0) — fields that to_json writes as JSON decimals."""
    raw = parse_config({"setting": setting}).to_json()
    if "lr" in raw:
        raw["lr"] = {**raw["lr"], "c": 0.8}
    if setting == "linear_regression":
        raw["w0"] = [0, 0, 0, 0, 0, 0, 0, 0.3]
    return raw


@pytest.mark.parametrize("setting", sorted(settings.SETTINGS))
def test_a_downloaded_config_loads_back_as_the_same_config_and_cache_key(setting):
    """The download (export.config_json, what the page's "Config (JSON, reloadable)" button writes) carries the
    marker "json_decimals": "float", so loads reads its decimals as the floats to_json wrote: the same config and
    cache key (before the marker, 0.8 came back as 4/5: another config, another key)."""
    cfg = parse_config(_with_float_lr(setting))
    text = export.config_json(cfg)
    assert json.loads(text)["json_decimals"] == "float"
    back = parse_config(loads(text))
    assert back == cfg
    assert core.simulation_key(back) == core.simulation_key(cfg)
    if setting != "sequence":
        assert isinstance(back.lr.c, float) and back.lr.c == 0.8


def test_without_the_marker_decimals_stay_exact():
    """The same document without the marker is a hand-written config: 0.8 is read as 4/5 (exact), as before."""
    cfg = parse_config(_with_float_lr("linear_regression"))
    doc = json.loads(export.config_json(cfg))
    del doc["json_decimals"]
    hand = parse_config(loads(json.dumps(doc)))
    assert hand.lr.c == Fraction(4, 5) and hand.w0_values[-1] == Fraction(3, 10)
    assert hand != cfg


@pytest.mark.parametrize("value", ['"exact"', '"Float"', "1", "null", '["float"]'])
def test_a_bad_json_decimals_marker_is_one_line_naming_it(value):
    with pytest.raises(ConfigError) as err:
        loads('{"json_decimals": %s, "lr": {"c": 0.8}}' % value)
    assert err.value.field == "json_decimals"
    assert str(err.value).startswith("json_decimals") and "\n" not in str(err.value)
