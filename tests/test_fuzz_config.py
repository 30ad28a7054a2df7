"""Property-based: thousands of generated configs at the validator, a sample at the CLI — each runs or is refused
with a ConfigError (exit 2 and one line at the CLI), never any other exception or a traceback.

Derandomized in CI (tests/conftest.py's "ci" profile); `make fuzz` draws fresh examples. Every counterexample found
is pinned below as an @example."""

import json
import os
import subprocess
import sys

from conftest import FUZZ_FACTOR, ROOT
from hypothesis import example, given, settings
from hypothesis import strategies as st

from backend.config import parse_config
from backend.errors import ConfigError

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-10**12, max_value=10**12),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
    st.sampled_from(["1/3", "0.92", "-1", "1e999", "nan", "inf", "1/0", "abc", "", " 2 ", "3.0"]))
small_lists = st.lists(scalars, max_size=4)
values = st.one_of(scalars, small_lists, st.dictionaries(st.text(max_size=6), scalars, max_size=3))

matrix = st.integers(1, 4).flatmap(lambda p: st.lists(
    st.lists(st.one_of(st.integers(-5, 5), st.floats(-10, 10), st.sampled_from(["1/2", "x", "nan"])),
             min_size=p, max_size=p), min_size=1, max_size=6))

field_values = {
    "setting": st.one_of(st.just("linear_regression"), scalars),
    "dataset": st.one_of(
        st.sampled_from(["graduate_admission", {"name": "graduate_admission"}]),
        st.fixed_dictionaries({"name": st.just("synthetic")}, optional={
            "n": st.one_of(st.integers(-3, 400), scalars), "p": st.one_of(st.integers(-1, 60), scalars),
            "noise": st.one_of(st.floats(-1, 5), scalars), "seed": st.one_of(st.integers(-1, 10), scalars)}),
        st.builds(lambda X, y: {"X": X, "y": y}, matrix, st.lists(st.integers(-3, 3), min_size=1, max_size=6)),
        values),
    "standardize": st.one_of(st.booleans(), scalars),
    "intercept": st.one_of(st.booleans(), scalars),
    "w0": st.one_of(st.fixed_dictionaries({}, optional={"seed": st.integers(-2, 5), "scale": st.floats(-1, 3)}),
                    st.lists(st.integers(-2, 2), min_size=0, max_size=9), values),
    "lr": st.one_of(st.fixed_dictionaries({}, optional={
        "schedule": st.sampled_from(["constant", "inverse", "inverse_offset", "cosine"]),
        "c": st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(["1/2", "-1", "0", "1e999"])),
        "t0": st.one_of(st.integers(-2, 5), scalars)}), values),
    "steps": st.one_of(st.integers(-5, 30000), scalars),
    "batch_sizes": st.one_of(st.lists(st.one_of(st.integers(-2, 600), scalars), max_size=5), values),
    "replicas": st.one_of(st.integers(-5, 2_000_000), scalars),
    "seed": st.one_of(st.integers(-5, 2**33), scalars),
    "sampler": st.one_of(st.sampled_from(["without_replacement", "with_replacement", "epoch_reshuffle"]), scalars),
    "device": st.one_of(st.sampled_from(["auto", "cpu", "cuda"]), scalars),
    "unknown_field": values,
}

configs = st.fixed_dictionaries({}, optional=field_values)


def assert_one_line_error(e: ConfigError) -> None:
    assert e.field and str(e) and "\n" not in str(e) and "\r" not in str(e)
    assert str(e).isprintable(), repr(str(e))


@settings(max_examples=1200 * FUZZ_FACTOR)
@given(configs)
@example({"dataset": {"X": [[1]], "y": [1], "\n": None}})  # a user's key echoed into the message: escaped
@example({"sampler": "with\u2028replacement"})  # a Unicode line separator in an echoed value
def test_validator_accepts_or_refuses_clearly(raw):
    try:
        cfg = parse_config(raw)
    except ConfigError as e:
        assert_one_line_error(e)
        return
    # accepted: the normalised form round-trips and respects the bounds
    assert parse_config(json.loads(json.dumps(cfg.to_json()))) == cfg
    assert 1 <= min(cfg.batch_sizes) and max(cfg.batch_sizes) <= cfg.n
    assert 10 <= cfg.replicas and 0 <= cfg.steps


@settings(max_examples=25 * FUZZ_FACTOR)
@given(configs)
@example({"unknown\nfield": 1})
def test_cli_runs_or_exits_2(raw):
    raw = dict(raw)
    if isinstance(raw.get("steps"), int) and raw["steps"] > 30:
        raw["steps"] = 30  # keep accepted runs short: this test is about the boundary, not the run
    proc = subprocess.run([sys.executable, "-m", "backend", "theory", "-"], input=json.dumps(raw), cwd=ROOT,
                          capture_output=True, text=True, timeout=120, env=os.environ.copy())
    assert proc.returncode in (0, 2), proc.stderr
    assert "Traceback" not in proc.stderr
    if proc.returncode == 2:
        assert proc.stderr.startswith("error: ") and proc.stderr.strip().count("\n") == 0
    else:
        json.loads(proc.stdout)


any_value = st.one_of(scalars, small_lists, st.dictionaries(st.text(max_size=6), scalars, max_size=3))
setting_fields = {
    "deep_linear": {"dims": st.one_of(st.lists(st.integers(-1, 6), min_size=0, max_size=6), any_value),
                    "teacher": st.one_of(st.fixed_dictionaries({}, optional={"seed": st.integers(-1, 5),
                                                                            "scale": st.floats(-1, 3)}), any_value),
                    "w0": st.one_of(st.lists(st.lists(st.lists(st.integers(-2, 2), max_size=3), max_size=3),
                                             max_size=3), any_value),
                    "lr": field_values["lr"], "steps": st.one_of(st.integers(-2, 50), scalars),
                    "batch_sizes": field_values["batch_sizes"], "replicas": field_values["replicas"],
                    "record_every": st.one_of(st.integers(-1, 5), scalars),
                    "dtype": st.one_of(st.sampled_from(["float32", "float64"]), scalars)},
    "mlp": {"preset": st.one_of(st.sampled_from(["laptop", "paper"]), scalars),
            "dataset": st.one_of(st.just({"name": "digits"}), st.just({"name": "digits", "train_size": 50}),
                                 st.fixed_dictionaries({"name": st.just("idx")}, optional={"path": scalars}),
                                 any_value),
            "hidden": st.one_of(st.lists(st.integers(-1, 40), max_size=5), any_value),
            "inits": st.one_of(st.integers(-1, 60), scalars), "epochs": st.one_of(st.integers(-1, 5), scalars),
            "batch_sizes": field_values["batch_sizes"],
            "distortion": st.one_of(st.fixed_dictionaries({}, optional={"alpha": st.floats(-1, 9),
                                                                        "sigma": st.floats(-1, 3),
                                                                        "every": st.integers(-1, 3)}), any_value),
            "sampler": st.one_of(st.sampled_from(["epoch_reshuffle", "without_replacement"]), scalars)},
    "sequence": {"preset": st.one_of(st.sampled_from(["laptop", "paper"]), scalars),
                 "corpus": st.one_of(st.sampled_from(["yelp", "imdb", "all", {"name": "file"}]), any_value),
                 "width": st.one_of(st.integers(-1, 70), scalars), "heads": st.one_of(st.integers(-1, 9), scalars),
                 "optimizer": st.one_of(st.fixed_dictionaries({}, optional={
                     "lr": st.one_of(st.floats(allow_nan=True), st.sampled_from(["1e-3", "-1"])),
                     "beta1": st.floats(-1, 2), "clip": st.floats(-1, 3), "warmup": st.integers(-1, 5)}), any_value),
                 "tokenizer": st.one_of(st.sampled_from(["word", "char"]), scalars),
                 "batch_sizes": field_values["batch_sizes"]},
}
other_settings = st.sampled_from(sorted(setting_fields)).flatmap(
    lambda s: st.fixed_dictionaries({"setting": st.just(s)},
                                    optional={**setting_fields[s], "unknown_field": any_value}))


@settings(max_examples=1000 * FUZZ_FACTOR)
@given(other_settings)
@example({"setting": "deep_linear", "teacher": {"\n": None}})  # found by a fresh-clone `make test` (issue 11)
def test_validator_other_settings(raw):
    """Deep linear, MLP and sequence configs: accepted (and round-tripping) or refused with a ConfigError."""
    try:
        cfg = parse_config(raw)
    except ConfigError as e:
        assert_one_line_error(e)
        return
    assert parse_config(json.loads(json.dumps(cfg.to_json()))).to_json() == cfg.to_json()
