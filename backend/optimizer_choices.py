"""Which optimizers a setting runs, asked of the setting itself: its config's parse is given a probe of each named
optimizer of backend/optim.py (every hyperparameter away from its default) and either takes it or refuses it naming
the ``optimizer`` field. The pages' shared optimizer widget (ui/optimizer.py) and the Sweeps page offer what this
says, so no list of settings is kept anywhere: a setting that learns a new optimizer is offered it."""

from __future__ import annotations

from backend.config import parse_config
from backend.errors import ConfigError
from backend.optim import FAMILIES, NAMES

_known: dict[str, tuple[str, ...]] = {}  # setting → its names, once a probe was conclusive


def optimizer_names(setting: str, base: dict | None = None, extra: dict | None = None) -> tuple[str, ...] | None:
    """The named optimizers of backend/optim.py the setting runs (in NAMES' order; "sgd" means the SGD family with
    momentum, Nesterov and weight decay — absent, the setting runs plain SGD only). ``base``: a raw config of the
    setting to probe on (its defaults when None); ``extra``: the setting's own keys of the ``optimizer`` field kept
    beside the named form (e.g. a learning rate). None when the base itself does not parse (nothing can be told)."""
    if setting in _known:
        return _known[setting]
    raw = {**(base or {}), "setting": setting}
    accepted = []
    for name in NAMES:
        try:
            parse_config({**raw, "optimizer": {**(extra or {}), **FAMILIES[name].probe}})
            accepted.append(name)
        except ConfigError as e:
            if not e.field.startswith("optimizer"):
                return None
    _known[setting] = tuple(accepted)
    return _known[setting]
