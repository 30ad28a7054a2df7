"""One home per quantity: a reported quantity declares here, once, what it is and how it is drawn — its name, label,
LaTeX, x-axis, whether exact theory exists, its estimator, its sign (which also bounds its band), its default axis,
whether a chart shades its band, its summary over initial weights and the results tab that draws it. Settings list
their tables (``quantities(config)``), engines report by them, and the pages and ui/ draw tabs and charts from the
table (through backend/charts/).

``EPOCH_QUANTITIES`` is the replica classifiers' table (the MLP, the sequence model, your own model: the engines
backend/engine/mlp.py and backend/engine/torch_model.py; docs/theory.md §3–§4)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True)
class Quantity:
    """One reported quantity: its CLI/output ``name``, a plain ``label``, its ``latex``, the x-axis it is reported
    over (``"t"`` steps or ``"epoch"``), whether exact theory exists for it (at some x), how it is estimated, whether
    it is ≥ 0 by definition (``nonnegative``: a variance, a loss, an error rate; a chart's linear axis then starts at
    0 and its band is clipped there), whether it is drawn on a log axis by default (``log``), whether a chart shades
    the 95 % band of its SE around the estimate (``band``: the interval ± t_{K−1, 0.975} · SE of docs/theory.md §4,
    or the min–max over initial weights where §4 says so; True by default: every quantity of today's tables has an
    SE), its summary over initial weights (``summary``: "mean" or "median", the paper's for variances), the results
    tab that draws it (``tab``) and further estimators of it that a result may carry (``estimators``: (curve name,
    what it is), e.g. the Rao–Blackwellised var_g_rb)."""

    name: str
    label: str
    latex: str
    x: str
    exact: bool
    estimator: str
    nonnegative: bool = True
    log: bool = False
    band: bool = True
    summary: str = "mean"
    tab: str = ""
    estimators: tuple[tuple[str, str], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "label": self.label, "latex": self.latex, "x": self.x, "exact": self.exact,
                "estimator": self.estimator, "nonnegative": self.nonnegative, "log": self.log, "band": self.band,
                "summary": self.summary, "tab": self.tab, "estimators": [list(e) for e in self.estimators]}

    def over(self, x: str) -> "Quantity":
        """The same quantity reported over another x-axis (``"t"`` or ``"epoch"``; its LaTeX's index follows)."""
        sub = {"t": "_t", "epoch": "_e"}
        return replace(self, x=x, latex=self.latex.replace(sub[self.x], sub[x]))

    def title(self) -> str:
        """A chart's title: the label, and "(log)" when drawn on a log axis."""
        return f"{self.label} (log)" if self.log else self.label


def labels(table: list[Quantity]) -> dict[str, str]:
    """name → label for every quantity of a table and each further estimator (its label: the quantity's, then what
    the estimator is)."""
    out = {q.name: q.label for q in table}
    for q in table:
        out.update({name: f"{q.label}, {what}" for name, what in q.estimators})
    return out


def estimated_by(table: list[Quantity]) -> dict[str, str]:
    """curve name → the quantity it estimates: each quantity itself and its further estimators."""
    out = {q.name: q.name for q in table}
    for q in table:
        out.update({name: q.name for name, _ in q.estimators})
    return out


def find(table: list[Quantity], name: str) -> Quantity | None:
    """The quantity called ``name`` in a table, or the one a further estimator called ``name`` estimates."""
    of = estimated_by(table).get(name)
    return next((q for q in table if q.name == of), None)


_MEAN = "mean over replicas and inits"
EPOCH_QUANTITIES: tuple[Quantity, ...] = (
    Quantity("var_g", "var(g) across replicas", r"\operatorname{var}(g_e \mid \mathcal F_0)", "epoch", False,
             "across-replica variance of a fresh mini-batch gradient per init; median over inits", log=True,
             summary="median", tab="Variance"),
    Quantity("loss_train", "training loss", r"L_{\mathrm{train}}", "epoch", False, _MEAN, tab="Loss and error"),
    Quantity("loss_val", "validation loss", r"L_{\mathrm{val}}", "epoch", False, _MEAN, tab="Loss and error"),
    Quantity("error_train", "training error", r"\mathrm{err}_{\mathrm{train}}", "epoch", False, _MEAN,
             tab="Loss and error"),
    Quantity("error_val", "validation error", r"\mathrm{err}_{\mathrm{val}}", "epoch", False, _MEAN,
             tab="Loss and error"),
    Quantity("gap_distorted", "accuracy(train) − accuracy(distorted validation)", r"\Delta_{\mathrm{distorted}}",
             "epoch", False, _MEAN, nonnegative=False, tab="Generalization gap"),  # a difference: either sign
    Quantity("noise_one_step", "one-step noise E[var(g | F_e)]", r"c_b\,\mathbb E\operatorname{tr}\Sigma(w_e)", "epoch",
             False, "Lemma 1 with the population covariance, from per-sample gradients on a subsample; median over "
             "inits", log=True, summary="median", tab="Variance split"),
    Quantity("noise_spread", "spread of ∇L across replicas", r"\operatorname{var}(\nabla L(w_e) \mid \mathcal F_0)",
             "epoch", False, "across-replica variance of the subsample gradient; median over inits", log=True,
             summary="median", tab="Variance split"),
    Quantity("b_simple", "B_simple = tr Σ / ‖∇L‖²", r"B_{\mathrm{simple}}", "epoch", False,
             "ratio of unbiased means over replicas, delta-method SE; median over inits", log=True, summary="median",
             tab="Variance split"),
)


# -- the step engines' quantities: linear regression and the deep linear network (backend/engine/linreg.py,
# backend/engine/deep_linear.py; docs/theory.md §1–§2, §4). Their names are declared here once: the settings' tables
# list these entries, the engines key their accumulators and curves by these names.
VAR_G, VAR_G_RB, VAR_FULL_GRAD, LOSS = "var_g", "var_g_rb", "var_full_grad", "loss"
RAO_BLACKWELLISED = "Rao–Blackwellised"
STEP_VAR_G = Quantity(
    VAR_G, "var(g_t | F_0)", r"\operatorname{var}(g_t \mid \mathcal F_0)", "t", True,
    "across-replica variance of the mini-batch gradient, batch-means SE; also var_g_rb (Rao–Blackwellised: Lemma 1's "
    "conditional variance averaged + the spread of ∇L(w_t), i.i.d. samplers)",
    estimators=((VAR_G_RB, RAO_BLACKWELLISED),))
STEP_VAR_FULL_GRAD = Quantity(
    VAR_FULL_GRAD, "var(∇L(w_t) | F_0)", r"\operatorname{var}(\nabla L(w_t) \mid \mathcal F_0)", "t", True,
    "across-replica variance of the full gradient, batch-means SE")
STEP_LOSS = Quantity(LOSS, "E L(w_t)", r"\mathbb E\, L(w_t)", "t", True, "mean over replicas, batch-means SE")
STEP_QUANTITIES: tuple[Quantity, ...] = (STEP_VAR_G, STEP_VAR_FULL_GRAD, STEP_LOSS)


def per_layer(name: str, k: int) -> str:
    """The curve of quantity ``name`` restricted to layer k = 1, 2, … of a deep network (e.g. var_g_layer2); the
    quantity itself is the sum over the layers."""
    return f"{name}_layer{k}"
