"""Command line: ``python -m backend {theory,simulate,polynomial,check,advise,cbs} CONFIG.json``, ``python -m backend
sweep SWEEP.json`` and ``python -m backend settings``; JSON on stdout, progress on stderr.

A bad config or argument exits with status 2 and one line on stderr naming the field; never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from backend.errors import Cancelled, ConfigError, one_line


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m backend", description="batchvar: SGD against the batch size b")
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_ in (("theory", "exact curves for every t and batch size"),
                        ("simulate", "replica estimates with standard errors"),
                        ("polynomial", "exact polynomial in 1/b at step t"),
                        ("check", "Theorems 1-2 on the exact values (non-increasing in b at every t)"),
                        ("advise", "which b for a budget of N samples (exact for linear regression)"),
                        ("cbs", "the critical batch size by branching from checkpoints (exact for linear regression)")):
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
            sp.add_argument("--momentum", default=None,
                            help="an axis of momenta, e.g. 0,0.5,0.9: the advice per β (the config's Nesterov and "
                                 "weight decay kept); --scaling may then list rules, e.g. none,sqrt,linear")
            sp.add_argument("--effective-lr", dest="effective_lr", action="store_true",
                            help="with --momentum: hold α/(1-β) fixed, the lr constant of each β is c(1-β)")
            _executor_options(sp, "the replica runs of a setting without exact theory")
        if name == "cbs":
            _cbs_options(sp)
            _executor_options(sp, "the replica branches of a setting without exact theory (one task)")
    sp = sub.add_parser("sweep", help="a grid of replica runs, one cached simulate per cell (local or on Ray)")
    sp.add_argument("sweep", help='sweep JSON: {"base": CONFIG, "grid": {"FIELD": [values], ...}}, or - for stdin')
    _executor_options(sp, "the cells")
    sp.add_argument("--no-cache", action="store_true", help="compute every cell, into a fresh temporary cache")
    sub.add_parser("settings", help="the registry of settings: quantities (x-axis, exact theory?) and presets")
    return p


def _cbs_options(sp) -> None:
    """``cbs``'s options (backend/cbs.py; docs/theory.md §11)."""
    sp.add_argument("--b-ref", dest="b_ref", required=True, help="the reference run's batch size B")
    sp.add_argument("--checkpoints", required=True, help="steps t1,t2,… of the reference run to branch from")
    sp.add_argument("--samples", required=True, help="samples S each branch takes: floor(S / (kB)) steps")
    sp.add_argument("--scaling", default="none", help="none, sqrt or linear: the branch's step size α_t·f(k)")
    sp.add_argument("--tolerance", default="0.01", help="ε: the largest kB with loss <= (1 + ε) × the k = 1 branch's")
    sp.add_argument("--ks", default=None, help="k = 1,2,4,… (default: powers of two while kB <= n)")


def _ints(text: str | None, option: str) -> list[int] | None:
    """A comma-separated list of whole numbers (None stays None); a ConfigError naming the option otherwise."""
    from backend.cbs import read_ints

    return read_ints(text, option)


def _executor_options(sp, what: str) -> None:
    sp.add_argument("--executor", default="local", choices=("local", "ray"),
                    help=f"where {what} run — local: one after another here; ray: an embedded Ray on 127.0.0.1, or "
                         "--address")
    sp.add_argument("--address", default=None, help="join this Ray cluster (e.g. HEAD_IP:6379) instead")
    sp.add_argument("--threads", default=None, help="CPU threads per cell on Ray (default: torch's count here)")


def _executor(args):
    """The sweep executor the options name (None: the local default, run through the API as before)."""
    if args.address is not None and args.executor != "ray":
        raise ConfigError("address", "--address joins a Ray cluster: use it with --executor ray")
    if args.executor != "ray":
        return None
    from backend.cluster import RayExecutor

    return RayExecutor(args.address, _number(args.threads, "threads", int))


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
        from backend import api, report
        from backend.config import loads, parse_config

        if args.command == "settings":
            return _emit({"settings": api.registry()})
        if args.command == "sweep":
            return _sweep(args)

        text = sys.stdin.read() if args.config == "-" else Path(args.config).read_text(encoding="utf-8")
        config = parse_config(loads(text))
        if args.command == "cbs":
            from backend import cbs

            return _emit(cbs.cbs(config, _number(args.b_ref, "b_ref", int), _ints(args.checkpoints, "checkpoints"),
                                 _number(args.samples, "samples", int), args.scaling,
                                 _number(args.tolerance, "tolerance", float), _ints(args.ks, "ks"),
                                 executor=_executor(args)))
        if args.command == "advise":
            from backend import advisor

            if args.momentum is not None or args.effective_lr:
                return _emit(_advise_momentum(args, config))
            return _emit(advisor.advise(config, _number(args.budget, "budget", int), args.scaling,
                                        _number(args.b_ref, "b_ref", float),
                                        _number(args.target_loss, "target_loss", float),
                                        executor=_executor(args)))
        if not api.has_theory(config) and args.command != "simulate":
            raise ConfigError("setting", f"'{args.command}' needs exact theory, which the setting {config.setting!r} "
                                         "does not have (replica estimates only); use 'simulate'")
        if args.command == "theory":
            out = report.theory_output(config, api.theory(config))
        elif args.command == "simulate":
            cache = None
            if args.no_cache:
                import tempfile

                from backend.cache import ResultCache
                cache = ResultCache(tempfile.mkdtemp(prefix="batchvar-"))
            out = report.simulate_output(config, api.simulate(config, cache=cache))
        elif args.command == "polynomial":
            out = api.polynomial(config, args.t, args.quantity, exact=False if args.force_float else None)
        else:
            out = {"setting": config.setting, "checks": api.check(config)}
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


def _sweep(args) -> int:
    """``sweep``: validate every cell (exit 2 naming the cell and field), print the estimate and one line per
    finished cell to stderr, the sweep document to stdout; exit 1 if a cell failed, 130 if cancelled (Ctrl-C)."""
    import signal
    import tempfile
    import threading
    import time

    from backend import sweep
    from backend.cache import ResultCache
    from backend.costs import format_duration

    executor = _executor(args) or sweep.LocalExecutor()
    text = sys.stdin.read() if args.sweep == "-" else Path(args.sweep).read_text(encoding="utf-8")
    spec = sweep.load_sweep(text)
    cache = ResultCache(tempfile.mkdtemp(prefix="batchvar-")) if args.no_cache else None
    est = sweep.estimate(spec, executor, cache)
    print(f"sweep: {est['cells']} cells ({est['cached']} cached) on {args.executor}: about "
          f"{format_duration(est['seconds'])} of device time, {format_duration(est['seconds_per_worker'])} on each of "
          f"{est['workers']} worker(s)", file=sys.stderr, flush=True)
    cancel = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: cancel.set())
    started = time.monotonic()
    try:
        out = sweep.run(spec, executor, cache, lambda k, n, entry: print(
            sweep.progress_line(k, n, entry, started), file=sys.stderr, flush=True), cancel)
    finally:
        signal.signal(signal.SIGINT, previous)
    out["estimate"] = est
    _emit(out)
    return 130 if cancel.is_set() else 1 if out["failed"] else 0


def _advise_momentum(args, config) -> dict:
    """``advise --momentum B1,B2,… [--effective-lr] [--scaling R1,R2,…]``: the advisor per β (backend/advisor.py:
    advise_momentum)."""
    from backend import advisor

    if args.momentum is None:
        raise ConfigError("effective_lr", "--effective-lr holds α/(1-β) fixed across the momenta of --momentum: give "
                                          "--momentum too")
    momenta = [part.strip() for part in args.momentum.split(",")]
    if any(not part for part in momenta):
        raise ConfigError("momentum", f"expected a comma-separated list of numbers, got {args.momentum!r}")
    return advisor.advise_momentum(config, _number(args.budget, "budget", int), momenta,
                                   tuple(part.strip() for part in args.scaling.split(",")),
                                   _number(args.b_ref, "b_ref", float), _number(args.target_loss, "target_loss", float),
                                   args.effective_lr, executor=_executor(args))


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
