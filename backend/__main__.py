"""Command line: ``python -m backend {theory,simulate,polynomial,check} CONFIG.json`` and ``python -m backend
settings``; JSON on stdout.

A bad config or argument exits with status 2 and one line on stderr naming the field; never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from backend.errors import Cancelled, ConfigError, one_line


def _list(a: np.ndarray) -> list:
    return [None if not np.isfinite(v) else float(v) for v in np.asarray(a, dtype=np.float64)]


def _curves_json(batch_sizes, curves: dict | None, quantities, with_se: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for j, b in enumerate(batch_sizes):
        entry: dict[str, Any] = {}
        for q in quantities:
            if curves is None:
                entry[q] = None
                continue
            if with_se:
                if q not in curves:
                    continue
                entry[q] = _list(curves[q]["value"][j])
                entry[f"{q}_se"] = _list(curves[q]["se"][j])
            else:
                entry[q] = _list(curves[q][j])
        out[str(b)] = entry
    return out


def _classifier_curves_json(curves: dict, j: int, fields, per_init: bool) -> dict[str, Any]:
    """Batch size number j of an MLP / sequence result: each field q over epochs with q_se, var_g_min / var_g_max
    (the spread over initial weights), and with several initial weights q_per_init and q_per_init_se (one list over
    epochs per init)."""
    entry: dict[str, Any] = {}
    for f in fields:
        c = curves[f]
        entry[f] = _list(c["value"][j])
        entry[f"{f}_se"] = _list(c["se"][j])
        if per_init:
            for suffix in ("per_init", "per_init_se"):
                entry[f"{f}_{suffix}"] = [_list(col) for col in np.asarray(c[suffix][j]).T]
    entry["var_g_min"], entry["var_g_max"] = _list(curves["var_g"]["min"][j]), _list(curves["var_g"]["max"][j])
    return entry


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m backend", description="batchvar: SGD against the batch size b")
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_ in (("theory", "exact curves for every t and batch size"),
                        ("simulate", "replica estimates with standard errors"),
                        ("polynomial", "exact polynomial in 1/b at step t"),
                        ("check", "Theorems 1-2 on the exact values (non-increasing in b at every t)"),
                        ("advise", "which b for a budget of N samples (exact for linear regression)")):
        sp = sub.add_parser(name, help=help_)
        sp.add_argument("config", help="config JSON file (as downloaded from the app), or - for stdin")
        if name == "polynomial":
            sp.add_argument("--t", type=int, required=True, help="iteration t")
            sp.add_argument("--quantity", default="var_g", help="var_g, var_full_grad or loss")
            sp.add_argument("--float", dest="force_float", action="store_true", help="float coefficients even if exact")
        if name == "simulate":
            sp.add_argument("--no-cache", action="store_true", help="compute even if a cached result exists")
        if name == "advise":
            sp.add_argument("--budget", required=True, help="gradient evaluations N (samples); T_b = N // b steps")
            sp.add_argument("--scaling", default="none", help="none, sqrt or linear: c_b = c (b / b_ref)^k")
            sp.add_argument("--b-ref", dest="b_ref", default=None, help="reference batch size (default: the smallest)")
            sp.add_argument("--target-loss", dest="target_loss", default=None,
                            help="also the steps and examples to reach E L(w_t) <= EPS, and the frontier fit")
    sub.add_parser("settings", help="the registry of settings: quantities (x-axis, exact theory?) and presets")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
        from backend import api
        from backend.config import loads, parse_config

        if args.command == "settings":
            return _emit({"settings": api.registry()})

        text = sys.stdin.read() if args.config == "-" else Path(args.config).read_text(encoding="utf-8")
        config = parse_config(loads(text))
        if args.command == "advise":
            from backend import advisor

            return _emit(advisor.advise(config, _number(args.budget, "budget", int), args.scaling,
                                        _number(args.b_ref, "b_ref", float),
                                        _number(args.target_loss, "target_loss", float)))
        if config.setting in ("mlp", "sequence") and args.command != "simulate":
            raise ConfigError("setting", f"'{args.command}' needs exact theory, which a nonlinear network does not "
                                         "have; use 'simulate'")
        if args.command == "theory":
            res = api.theory(config)
            out = {"setting": config.setting, "t": res["t"].tolist(), "available": res["available"],
                   "note": res["note"],
                   "curves": _curves_json(config.batch_sizes, res["curves"], api.quantities(config), with_se=False)}
            if "methods" in res:
                out["exact_methods"] = {str(t): m for t, m in res["methods"].items()}
        elif args.command == "simulate":
            cache = None
            if args.no_cache:
                import tempfile

                from backend.cache import ResultCache
                cache = ResultCache(tempfile.mkdtemp(prefix="batchvar-"))
            res = api.simulate(config, cache=cache)
            meta = res["meta"]
            if config.setting in ("mlp", "sequence"):
                out = {"setting": config.setting, "epoch": res["epoch"].tolist(),
                       "curves": {str(b): _classifier_curves_json(res["curves"], j, api.quantities(config),
                                                                  config.inits > 1)
                                  for j, b in enumerate(config.batch_sizes)},
                       "inits": config.inits, "replicas": config.replicas, "band": res["band"],
                       "sampler": meta["sampler_label"], "device": meta["device"],
                       "diverged_at": {str(x["b"]): x["diverged_at"] for x in meta["per_b"]}}
                return _emit(out)
            out = {"setting": config.setting, "t": res["t"].tolist(),
                   "curves": _curves_json(config.batch_sizes, res["curves"], (*api.quantities(config), "var_g_rb"), True),
                   "finite_count": {str(b): res["finite_count"][j].tolist() for j, b in enumerate(config.batch_sizes)},
                   "diverged_at": dict(zip(map(str, config.batch_sizes), meta["diverged_at"])),
                   "sampler": meta["sampler_label"], "device": meta["device"], "groups": meta["groups"]}
        elif args.command == "polynomial":
            out = api.polynomial(config, args.t, args.quantity, exact=False if args.force_float else None)
        elif config.setting == "deep_linear":
            th_res = api.theory(config)
            out = {"setting": config.setting, "checks": {
                str(t): {q: {"no_constant_term": c[0] == 0 if q != "loss" else None,
                             "b0": api.decrease_threshold(c) if q != "loss" else None,
                             "method": th_res["methods"][t]}
                         for q, c in qs.items()} for t, qs in th_res["polynomials"].items()}}
        else:
            out = {"setting": config.setting, "checks": api.check_monotone(config)}
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(f"error: config: cannot read {one_line(e.filename)}", file=sys.stderr)
        return 2
    except (UnicodeDecodeError, IsADirectoryError):
        print("error: config: the file is not UTF-8 JSON text", file=sys.stderr)
        return 2
    except Cancelled:
        print("error: cancelled", file=sys.stderr)
        return 130
    return _emit(out)


def _number(text: str | None, option: str, kind: type):
    """A command-line number (None stays None); a ConfigError naming the option otherwise."""
    if text is None:
        return None
    try:
        return kind(text)
    except ValueError:
        raise ConfigError(option, f"expected {'a whole number' if kind is int else 'a number'}, got {text!r}") from None


def _emit(out: dict) -> int:
    """The result as one JSON document on stdout (exit 0)."""
    try:
        json.dump(out, sys.stdout, allow_nan=False)
        sys.stdout.write("\n")
        sys.stdout.flush()
    except BrokenPipeError:  # e.g. piped into `head`
        sys.stderr.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
