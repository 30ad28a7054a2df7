"""The one optimizer widget every setting page shares: the ``optimizer`` field of the raw config (backend/optim.py's
form, torch.optim's semantics): the name among those the setting runs (asked of the setting: api.optimizer_names),
then momentum β, Nesterov and weight decay λ (SGD family) or β₁, β₂, ε and weight decay (Adam, AdamW). Numbers are
text, so "9/10" or "0.9" stay exact for the exact theory; validation is the config's (a bad value is one red line
naming its field, from ui.state.validated)."""

from __future__ import annotations

from typing import Any, Callable

import streamlit as st

from backend import api

LABELS = {"sgd": "SGD (momentum, Nesterov, weight decay)", "adam": "Adam (L2 weight decay)",
          "adamw": "AdamW (decoupled weight decay)"}
HELP = ("torch.optim semantics. SGD (dampening 0): d = g + λw, v ← βv + d (v₁ = d₀), step v (or d + βv with "
        "Nesterov), w ← w − α·step. Adam/AdamW: torch.optim.Adam / AdamW with bias correction. The variance reported "
        "is that of the mini-batch gradient of the data loss (without λw).")


def _start(raw: Any) -> dict[str, Any]:
    """The widget's starting values from a config's ``optimizer`` (either form: the named one, or a setting's own
    Adam fields beta1/beta2)."""
    o = raw if isinstance(raw, dict) else ({"name": raw} if isinstance(raw, str) else {})
    name = o.get("name", "adamw" if "beta1" in o else "sgd")
    betas = o.get("betas", [o.get("beta1", "0.9"), o.get("beta2", "0.999")])
    return {"name": name, "momentum": o.get("momentum", 0), "nesterov": bool(o.get("nesterov", False)),
            "weight_decay": o.get("weight_decay", 0), "betas": betas, "eps": o.get("eps", "1e-8")}


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
                         format_func=lambda n: LABELS.get(n, n), help=HELP)
    lam = box.text_input("Weight decay λ", str(s["weight_decay"]), key=k("opt_wd"),
                         help="L2: d = g + λw (SGD, Adam); AdamW: w ← w(1 − αλ) before the step. ≥ 0")
    if name == "sgd":
        c1, c2 = box.columns([3, 2])
        beta = c1.text_input("Momentum β", str(s["momentum"]), key=k("opt_beta"),
                             help="in [0, 1); e.g. 0.9 or 9/10 (exact for the exact theory)")
        nesterov = c2.checkbox("Nesterov", s["nesterov"], key=k("opt_nesterov"), help="needs β > 0")
        out: dict[str, Any] = {"name": "sgd", "momentum": beta.strip(), "nesterov": nesterov,
                               "weight_decay": lam.strip()}
        if extra is None and _is_zero(beta) and _is_zero(lam) and not nesterov:
            return None
    else:
        c1, c2, c3 = box.columns(3)
        b1 = c1.text_input("β₁", str(s["betas"][0]), key=k("opt_b1"))
        b2 = c2.text_input("β₂", str(s["betas"][1]), key=k("opt_b2"))
        eps = c3.text_input("ε", str(s["eps"]), key=k("opt_eps"))
        out = {"name": name, "betas": [b1.strip(), b2.strip()], "eps": eps.strip(), "weight_decay": lam.strip()}
    return {**(extra or {}), **out}


def _is_zero(text: str) -> bool:
    """The text is the number 0 (so plain SGD leaves the field out)."""
    try:
        return float(text) == 0
    except ValueError:
        return False
