"""The one optimizer widget every setting page shares: the ``optimizer`` field of the raw config (backend/optim.py's
form, torch.optim's semantics): the name among those the setting runs (asked of the setting: api.optimizer_names),
then that optimizer's hyperparameters as backend/optim.py's ``FAMILIES`` lays them out (rows of its ``Hyper`` fields,
e.g. SGD: weight decay λ, momentum β, Nesterov; Adam, AdamW: weight decay, β₁, β₂, ε), with its semantics as
help. Numbers are text, so "9/10" or "0.9" stay exact for the exact theory; validation is the config's (a bad value
is one red line naming its field, from ui.state.validated)."""

from __future__ import annotations

from typing import Any, Callable

import streamlit as st

from backend import api

HELP = "The variance reported is that of the mini-batch gradient of the data loss (without λw)."


def _help(names) -> str:
    """The selectbox's help: torch.optim's semantics of each optimizer offered, then what the variance is of."""
    return " ".join(["torch.optim semantics.", *(api.OPTIMIZERS[n].semantics for n in names if n in api.OPTIMIZERS),
                     HELP])


def _start(raw: Any) -> dict[str, Any]:
    """The config's ``optimizer`` as a named-form dict (a bare name as {"name": …}; a setting's own old-form Adam
    fields beta1/beta2 as AdamW's betas)."""
    o = dict(raw) if isinstance(raw, dict) else ({"name": raw} if isinstance(raw, str) else {})
    if "name" not in o:
        o["name"] = "adamw" if "beta1" in o else "sgd"
    if "beta1" in o or "beta2" in o:
        o.setdefault("betas", [o.get("beta1", "0.9"), o.get("beta2", "0.999")])
    return o


def _value(start: dict[str, Any], h) -> Any:
    """A hyperparameter's starting value: the config's (an element of a list field), else the widget's default."""
    v = start.get(h.key, h.default)
    if h.index is not None:
        v = v[h.index] if isinstance(v, (list, tuple)) and len(v) > h.index else h.default
    return v


def optimizer(setting: str, start: Any, k: Callable[[str], str], base: dict | None = None,
              extra: dict | None = None, container=None) -> dict | None:
    """The ``optimizer`` field: None for plain SGD when ``extra`` is None (the page leaves the field out: today's
    config, cache key and URL), else the named form with ``extra`` (a setting's own keys beside it, e.g. the sequence
    model's lr, warmup, clip). ``start``: the config's optimizer value; ``base``: the page's raw config, to ask the
    setting what it runs; ``k``: the page's widget keys. The "Your model" page calls it the same way."""
    box = (container or st.sidebar).expander("Optimizer", expanded=start is not None)
    names = api.optimizer_names(setting, base, extra)
    if names is None:  # the rest of the config does not parse yet: its own error box says why
        names = ("sgd",)
    s = _start(start)
    if not names:
        box.caption("This setting runs plain SGD, w ← w − α g (momentum and weight decay are not wired in here).")
        return None if extra is None else dict(extra)
    choices = list(names) if s["name"] in names else [*names, s["name"]]  # an unknown name: validation names it
    name = box.selectbox("Optimizer", choices, index=choices.index(s["name"]), key=k("opt_name"),
                         format_func=lambda n: api.OPTIMIZERS[n].label if n in api.OPTIMIZERS else n,
                         help=_help(choices))
    out: dict[str, Any] = {"name": name}
    family = api.OPTIMIZERS.get(name)
    for row in family.rows if family else ():
        cells = box.columns(len(row)) if len(row) > 1 else [box]
        for cell, h in zip(cells, row):
            key = k(f"opt_{h.key}" if h.index is None else f"opt_{h.key}{h.index}")
            if h.kind == "flag":
                value: Any = cell.checkbox(h.label, bool(_value(s, h)), key=key, help=h.help or None)
            else:
                value = cell.text_input(h.label, str(_value(s, h)), key=key, help=h.help or None).strip()
            if h.index is None:
                out[h.key] = value
            else:
                out.setdefault(h.key, {})[h.index] = value
    out = {key: [v[i] for i in sorted(v)] if isinstance(v, dict) else v for key, v in out.items()}  # list fields
    if extra is None and api.plain_optimizer(out):
        return None
    return {**(extra or {}), **out}
