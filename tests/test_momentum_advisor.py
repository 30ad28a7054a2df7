"""The batch-size advisor along a momentum axis (docs/theory.md §7, §9): every (rule, β, b) against the enumeration of
every batch sequence with torch.optim.SGD's update in exact rationals (tests/test_momentum_linreg.py: enumerate_sgd,
no shared code with the backend), the plain lanes bitwise the plain advisor, --effective-lr's step sizes, and the CLI's
refusals in one line."""

from __future__ import annotations

import json
from fractions import Fraction

import pytest
from conftest import TINY_W0, TINY_X, TINY_Y, tiny_config_json
from test_momentum_linreg import enumerate_sgd

from backend import advisor
from backend.__main__ import main
from backend.config import parse_config
from backend.errors import ConfigError

F = Fraction
BUDGET = 3  # T_b = 3, 1, 0 steps at b = 1, 2, 4 (n = 5)
BS = (1, 2, 4)
MOMENTA = ("0", "1/2", "9/10")
OPTS = {"heavy_ball": {}, "nesterov_weight_decay": {"nesterov": True, "weight_decay": "1/7"}}


def _config(opt: dict, c: str = "1/4"):
    raw = {"name": "sgd", "momentum": "1/2", **opt} if opt else None
    return parse_config(tiny_config_json(batch_sizes=list(BS), lr={"schedule": "inverse", "c": c},
                                         **({"optimizer": raw} if raw else {})))


@pytest.mark.parametrize("opt,effective_lr", [("heavy_ball", False), ("nesterov_weight_decay", True)])
def test_every_momentum_and_rule_equals_enumeration(opt, effective_lr):
    """loss, var(∇L) and var(g) at T_b for every (rule, β, b), and the best b per β and overall, against every batch
    sequence enumerated in exact rationals with the config's Nesterov and λ; with --effective-lr the step size of β is
    c(1 − β)(b/b_ref)^k / (t + 1)."""
    cfg = _config(OPTS[opt])
    nesterov, lam = cfg.optimizer.nesterov, cfg.optimizer.weight_decay
    out = advisor.advise_momentum(cfg, BUDGET, list(MOMENTA), ("none", "linear"), b_ref=1, effective_lr=effective_lr)
    assert out["momentum"] == [0.0, 0.5, 0.9] and out["effective_lr"] is effective_lr and out["exact"]
    for scaling in ("none", "linear"):
        best_overall = None
        for beta_text in MOMENTA:
            beta = F(beta_text)
            ans = out["answers"][scaling][f"{float(beta):g}"]
            assert ans["momentum"] == float(beta) and ans["optimizer"]["momentum"] in (0, "0", beta_text)
            losses = {}
            for b in BS:
                T = BUDGET // b
                c_b = F(1, 4) * (1 - beta if effective_lr else 1) * (b if scaling == "linear" else 1)
                ref = enumerate_sgd(TINY_X, TINY_Y, TINY_W0, [c_b / (t + 1) for t in range(T)], b, T, beta,
                                    nesterov and beta != 0, lam)
                row = ans["curves"][str(b)]
                assert row["steps"] == T and row["lr_c"] == pytest.approx(float(c_b), rel=1e-15)
                for q in ("loss", "var_full_grad", "var_g"):
                    assert row[q] == pytest.approx(float(ref[q]), rel=1e-11, abs=1e-14), (scaling, beta, b, q)
                losses[b] = ref["loss"]
            best = min(losses, key=losses.get)  # none of these tiny runs diverges
            assert ans["best_b"] == best and out["best_b"][scaling][f"{float(beta):g}"] == best
            if best_overall is None or losses[best] < best_overall[1]:
                best_overall = (float(beta), losses[best], best)
        got = out["best"][scaling]
        assert (got["momentum"], got["b"]) == (best_overall[0], best_overall[2])


def test_the_plain_lanes_are_the_plain_advisor_bitwise_and_momentum_changes_the_answer():
    cfg = parse_config({"batch_sizes": [4, 32, 128], "lr": {"schedule": "inverse", "c": "1/4"}})
    plain = advisor.advise_rules(cfg, 4000, ("none", "sqrt"), b_ref=4)
    out = advisor.advise_momentum(cfg, 4000, [0, "0.9"], ("none", "sqrt"), b_ref=4)
    for s in ("none", "sqrt"):
        zero = out["answers"][s]["0"]
        assert {k: v for k, v in zero.items() if k not in ("momentum", "optimizer")} == plain[s]
        assert out["answers"][s]["0.9"]["curves"]["4"]["loss"] != zero["curves"]["4"]["loss"]



def test_the_plain_and_momentum_passes_run_at_once_with_the_numbers_of_one_core(monkeypatch):
    """On two cores lane_paths runs the plain pass and the doubled-state pass in two threads at once; the answers are
    bitwise those of one core, where the passes run one after the other."""
    import threading

    from backend.theory import momentum_lanes, paths

    cfg = parse_config({"batch_sizes": [4, 32, 128], "lr": {"schedule": "inverse", "c": "1/4"}})
    threads, plain_run, momentum_run = set(), paths._run_lanes, momentum_lanes.run_momentum_lanes

    def spy(run):
        def wrapped(*args):
            threads.add(threading.current_thread().name)
            return run(*args)
        return wrapped

    monkeypatch.setattr(paths, "_run_lanes", spy(plain_run))
    monkeypatch.setattr(momentum_lanes, "run_momentum_lanes", spy(momentum_run))
    monkeypatch.setattr(momentum_lanes.os, "sched_getaffinity", lambda pid: {0, 1})
    both = advisor.advise_momentum(cfg, 4000, [0, "0.5", "0.9"], target_loss=0.05)
    assert len(threads) == 2 and all(name.startswith("batchvar-lanes") for name in threads)
    threads.clear()
    monkeypatch.setattr(momentum_lanes.os, "sched_getaffinity", lambda pid: {0})
    one = advisor.advise_momentum(cfg, 4000, [0, "0.5", "0.9"], target_loss=0.05)
    assert threads == {threading.current_thread().name}
    assert json.dumps(both, sort_keys=True) == json.dumps(one, sort_keys=True)

def test_a_diverging_lane_is_named_and_never_the_best():
    """β = 0.99 with the linear rule at large b blows up (its float loss may come out of any sign); it is marked
    diverged and the best b is among the others."""
    cfg = parse_config({"batch_sizes": [2, 256], "lr": {"schedule": "constant", "c": "0.5"}})
    out = advisor.advise_momentum(cfg, 2560, ["0.99"], ("linear",), b_ref=2)
    ans = out["answers"]["linear"]["0.99"]
    assert ans["curves"]["256"]["diverged"] and ans["best_b"] != 256
    for row in ans["curves"].values():
        assert row["diverged"] or row["loss"] >= 0


@pytest.mark.parametrize("momenta,message", [([], "non-empty"), (["1"], "[0, 1)"), (["-0.1"], "[0, 1)"),
                                             (["x"], "number"), (["0.5", "1/2"], "twice"), ("0.5", "list")])
def test_bad_momentum_axis_is_refused_naming_it(momenta, message):
    with pytest.raises(ConfigError, match="^momentum") as err:
        advisor.advise_momentum(_config({}), BUDGET, momenta)
    assert message in str(err.value)


def _cli(tmp_path, capsys, *args) -> tuple[int, str, str]:
    """``python -m backend advise`` in this process (its main): exit status, stdout, stderr."""
    path = tmp_path / "c.json"
    path.write_text(json.dumps(tiny_config_json(batch_sizes=list(BS))))
    capsys.readouterr()
    rc = main(["advise", str(path), "--budget", "4", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_momentum_axis_and_effective_lr(tmp_path, capsys):
    rc, stdout, stderr = _cli(tmp_path, capsys, "--momentum", "0,0.5,0.9", "--effective-lr", "--scaling",
                              "none,linear", "--b-ref", "1")
    assert rc == 0, stderr
    res = json.loads(stdout)
    assert res["scalings"] == ["none", "linear"] and res["effective_lr"] and res["momentum"] == [0.0, 0.5, 0.9]
    assert set(res["answers"]["linear"]) == {"0", "0.5", "0.9"} and set(res["best_b"]) == {"none", "linear"}
    for beta, key in ((0, "0"), (0.5, "0.5"), (0.9, "0.9")):  # c = 1/4: the lr constant is c(1 − β)(b/b_ref)^k
        assert res["answers"]["none"][key]["curves"]["2"]["lr_c"] == pytest.approx(0.25 * (1 - beta), rel=1e-15)
        assert res["answers"]["linear"][key]["curves"]["4"]["lr_c"] == pytest.approx(0.25 * (1 - beta) * 4,
                                                                                        rel=1e-15)


@pytest.mark.parametrize("args,option", [(["--momentum", "0,1"], "momentum"), (["--momentum", "0,,0.5"], "momentum"),
                                         (["--momentum", "a"], "momentum"), (["--effective-lr"], "effective_lr"),
                                         (["--momentum", "0.5", "--scaling", "none,cube"], "scaling")])
def test_cli_refuses_bad_momentum_options_in_one_line(tmp_path, capsys, args, option):
    rc, stdout, stderr = _cli(tmp_path, capsys, *args)
    assert rc == 2 and not stdout and stderr.startswith(f"error: {option}:") and stderr.count("\n") == 1


SEQUENCE = {"setting": "sequence", "layers": 1, "heads": 1, "width": 8, "vocab": 50, "max_len": 8, "inits": 1,
            "replicas": 2, "epochs": 1, "batch_sizes": [8, 32], "noise_samples": 4, "eval_size": 64, "device": "cpu"}


def _advise(tmp_path, capsys, raw: dict, *args) -> tuple[int, str, str]:
    path = tmp_path / "c.json"
    path.write_text(json.dumps(raw))
    capsys.readouterr()
    rc = main(["advise", str(path), "--budget", "256", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_the_momentum_axis_on_the_sequence_model_keeps_its_optimizer_field(tmp_path, capsys, monkeypatch):
    """The replica advisor along β for the sequence model, whose optimizer field also holds lr, warm-up and clip:
    each β's run keeps them (lr scaled by 1 − β with --effective-lr), its Nesterov and λ; the β = 1/2 answer equals
    the plain advisor on the config written by hand with that optimizer; an AdamW config is refused in one line."""
    monkeypatch.setenv("BATCHVAR_CACHE_DIR", str(tmp_path / "cache"))
    opt = {"name": "sgd", "lr": "0.01", "nesterov": True, "momentum": "0.9", "weight_decay": "0.001", "warmup": 3,
           "clip": "2"}
    rc, stdout, stderr = _advise(tmp_path, capsys, {**SEQUENCE, "optimizer": opt}, "--momentum", "0,0.5",
                                 "--effective-lr")
    assert rc == 0, stderr
    res = json.loads(stdout)
    answers = res["answers"]["none"]
    for key, beta, nesterov in (("0", 0, False), ("0.5", 0.5, True)):
        got = answers[key]["optimizer"]
        assert float(got["lr"]) == pytest.approx(0.01 * (1 - beta), rel=1e-15), key
        assert (F(got["momentum"]), got["nesterov"], F(got["weight_decay"])) == (F(beta), nesterov, F(1, 1000))
        assert (got["warmup"], float(got["clip"])) == (3, 2.0)
    assert answers["0"]["curves"]["8"]["loss"] != answers["0.5"]["curves"]["8"]["loss"]
    by_hand = {**opt, "momentum": "0.5", "lr": "0.005"}
    rc, stdout, stderr = _advise(tmp_path, capsys, {**SEQUENCE, "optimizer": by_hand})
    assert rc == 0, stderr
    plain = json.loads(stdout)  # one rule's answer (scaling none)
    assert plain["scaling"] == "none"
    for b in ("8", "32"):
        assert answers["0.5"]["curves"][b]["loss"] == plain["curves"][b]["loss"]
        assert answers["0.5"]["curves"][b]["loss_se"] == plain["curves"][b]["loss_se"]
    rc, stdout, stderr = _advise(tmp_path, capsys, SEQUENCE, "--momentum", "0,0.5")  # the AdamW defaults
    assert rc == 2 and not stdout and stderr.count("\n") == 1
    assert stderr.startswith("error: momentum: the momentum axis is the SGD family's") and "'adamw'" in stderr
