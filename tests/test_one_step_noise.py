"""Lemma 1's one-step noise as the runs report it (docs/theory.md §3).

At epoch 0 every replica of an initial weight sits at w0, so the across-replica variance of a fresh mini-batch
gradient *is* Lemma 1's one-step variance c_b · tr Σ(w0) (Σ the population covariance over the n training points):
the run's ``var_g`` (a replica estimate with its SE) and its ``noise_one_step`` (exact when the noise subsample is
the whole training set) must agree within 4 SE. With the unbiased S² in place of tr Σ they differ by n/(n−1) = 8/7,
which is > 30 SE here.
"""

import itertools
import json
import os
import subprocess
import sys
from fractions import Fraction

import numpy as np
from conftest import ROOT

from backend import lemma1


def _simulate_cli(cfg: dict, tmp_path) -> dict:
    path = tmp_path / "c.json"
    path.write_text(json.dumps(cfg))
    out = subprocess.run([sys.executable, "-m", "backend", "simulate", str(path), "--no-cache"], cwd=ROOT,
                         capture_output=True, text=True, env=os.environ.copy(), timeout=600)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _assert_epoch0_identity(res: dict, b: int) -> None:
    c = res["curves"][str(b)]
    var_g, se = c["var_g"][0], c["var_g_se"][0]
    noise, noise_se = c["noise_one_step"][0], c["noise_one_step_se"][0]
    assert se < 0.02 * var_g  # precise enough to tell 8/7 apart
    assert noise_se <= 1e-9 * noise  # every replica at w0: the one-step term is the same number for all
    assert c["noise_spread"][0] <= 1e-20 * var_g  # and the full gradient has no spread
    z = (var_g - noise) / se
    assert abs(z) <= 4, (var_g, noise, z)


def test_epoch0_identity_mlp(tmp_path):
    res = _simulate_cli({"setting": "mlp", "dataset": {"name": "digits", "train_size": 8}, "hidden": [8],
                         "inits": 1, "replicas": 10000, "epochs": 1, "batch_sizes": [2],
                         "sampler": "without_replacement", "noise_samples": 8, "eval_size": 8, "dtype": "float64",
                         "device": "cpu", "seed": 1}, tmp_path)
    assert res["device"] == "cpu"
    _assert_epoch0_identity(res, 2)


def test_epoch0_identity_sequence(tmp_path):
    sentences = ["good food", "bad service", "great place", "awful taste", "nice staff", "terrible wait",
                 "lovely room", "rude waiter", "fine wine", "cold soup"]
    corpus = tmp_path / "tiny.tsv"
    corpus.write_text("".join(f"{s}\t{i % 2}\n" for i, s in enumerate(sentences)))
    res = _simulate_cli({"setting": "sequence", "corpus": {"name": "file", "path": str(corpus)}, "layers": 1,
                         "heads": 1, "width": 4, "max_len": 4, "vocab": 40, "inits": 1, "replicas": 10000,
                         "epochs": 1, "batch_sizes": [3], "sampler": "without_replacement", "noise_samples": 8,
                         "eval_size": 8, "dtype": "float64", "device": "cpu", "seed": 1}, tmp_path)
    _assert_epoch0_identity(res, 3)


def test_population_trace_and_squared_gradient_are_unbiased_over_every_subsample():
    """Over all m-subsets S of n points (exact rationals): the mean of (n−1)/n · S² is tr Σ (population), and the
    mean of ‖∇L_S‖² − c_m · that is ‖∇L‖²; S² alone would give n/(n−1) · tr Σ."""
    rng = np.random.default_rng(0)
    n, m, d = 7, 3, 2
    g = [[Fraction(int(v)) for v in row] for row in rng.integers(-5, 6, size=(n, d))]
    mean = [sum(row[j] for row in g) / n for j in range(d)]
    trace = sum(sum((row[j] - mean[j]) ** 2 for j in range(d)) for row in g) / n
    grad_sq = sum(v * v for v in mean)
    traces, sqs = [], []
    for S in itertools.combinations(range(n), m):
        ms = [sum(g[i][j] for i in S) / m for j in range(d)]
        s2 = sum(sum((g[i][j] - ms[j]) ** 2 for j in range(d)) for i in S) / (m - 1)
        tp = lemma1.population_trace(s2, n)
        traces.append(tp)
        sqs.append(lemma1.squared_full_gradient(sum(v * v for v in ms), tp, m, n))
    assert sum(traces) / len(traces) == trace
    assert sum(sqs) / len(sqs) == grad_sq
    assert trace != 0 and sum(t * n / (n - 1) for t in traces) / len(traces) != trace
