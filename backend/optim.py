"""The optimizers, in one place: small (init, update) pieces over parameters stacked over replicas, with exactly
``torch.optim``'s semantics, and the one reader of a config's ``optimizer`` field (docs/theory.md §8).

Parameters, gradients and state are dicts of tensors whose leading dimension is the replica (N, …); every piece is
elementwise or reduces within a replica only, so one optimizer over the stack equals N independent ones, without a
Python loop over replicas. As in optax, an optimizer is a chain: gradient transforms (``clip_by_replica_norm``,
``add_decayed_weights``, ``trace``), each ``update(updates, state, params, t) → updates``, then one rule that takes
the step size α_t and writes the parameters in place (``SGDStep``: w ← w − α u; ``AdamStep``: Adam's moments,
bias correction and AdamW's decoupled decay). The rule is one piece, not optax's ``scale_by_adam`` then
``scale(−α)``, so that the rounding is torch's fused ``w − α u`` for SGD and the sequence model's
``w − (α m̂)/(√v̂ + ε)`` for Adam(W). With g_t the mini-batch gradient and t = 0, 1, … the steps already taken:

- SGD (``torch.optim.SGD``, dampening 0): d_t = g_t + λ w_t; v_1 = d_0, v_{t+1} = β v_t + d_t; the step is v_{t+1},
  or d_t + β v_{t+1} with Nesterov; w_{t+1} = w_t − α_t · step. β = λ = 0 is w − α g, bitwise.
- Adam (``torch.optim.Adam``): d_t = g_t + λ w_t (L2); m ← β₁ m + (1 − β₁) d, v ← β₂ v + (1 − β₂) d²;
  w ← w − α (m / (1 − β₁^{t+1})) / (√(v / (1 − β₂^{t+1})) + ε).
- AdamW (``torch.optim.AdamW``): the same moments of g_t, and the decay decoupled: w ← w (1 − α λ) before the step.

The state is a plain dict of tensors (a checkpoint stores it as it is), allocated once by ``init`` and updated in
place (static buffers for CUDA graphs: the momentum buffer starts at 0, which makes v_1 = β·0 + d_0 = d_0 exactly);
α_t may be a Python float or a 0-dim tensor on the device. Pieces never write to the updates they are given;
those that need work space (weight decay's d = g + λw, Adam's α m̂ and √v̂ + ε) keep buffers (``Scratch``)
reused from step to step, so a step allocates no parameter-sized temporaries.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Protocol

import torch

from backend.errors import ConfigError
from backend.exact import jsonable_number, parse_number
from backend.fields import Fields, read_bool, read_choice, read_positive

Params = dict[str, torch.Tensor]
State = dict[str, torch.Tensor]
Rate = float | torch.Tensor  # α_t: a Python number, or a 0-dim tensor (a static buffer a CUDA graph reads)


@dataclass(frozen=True)
class Hyper:
    """One hyperparameter of a named optimizer as its config field and its widget (ui/optimizer.py draws them):
    ``key`` the field of the ``optimizer`` object (``index`` the element of a list field such as ``betas``),
    ``kind`` "number" (a text box: "9/10" stays exact) or "flag" (a checkbox), ``default`` the widget's start."""

    key: str
    label: str
    default: Any
    kind: str = "number"
    index: int | None = None
    help: str = ""
    levels: bool = False  # a few levels (a momentum 0, 0.5, 0.9, 0.99): a sweep draws it on an ordinal axis


@dataclass(frozen=True)
class Family:
    """What everything outside this module knows of one named optimizer: its label, its hyperparameters laid out as
    rows of the shared widget, and a probe (every hyperparameter away from its default) by which a setting is asked
    whether it runs it (backend/optimizer_choices.py). The parse, ``to_json`` and ``build`` of ``OptimizerSpec``
    below are its other half; a new optimizer is its pieces, its entry here and its branches there."""

    label: str
    rows: tuple[tuple[Hyper, ...], ...]
    probe: dict[str, Any]
    semantics: str = ""  # its update in one line (the widget's help)

    @property
    def fields(self) -> tuple[str, ...]:
        """Its fields of the ``optimizer`` object, besides ``name`` (a sweep can vary each)."""
        return tuple(dict.fromkeys(h.key for row in self.rows for h in row))

    @property
    def level_fields(self) -> tuple[str, ...]:
        """Its fields that take a few levels (flags, ``Hyper.levels``): a sweep's ordinal axes."""
        return tuple(dict.fromkeys(h.key for row in self.rows for h in row if h.levels or h.kind == "flag"))


_WEIGHT_DECAY = Hyper("weight_decay", "Weight decay λ", 0,
                      help="L2: d = g + λw (SGD, Adam); AdamW: w ← w(1 − αλ) before the step. ≥ 0")
_ADAM_ROW = (Hyper("betas", "β₁", "0.9", index=0, levels=True), Hyper("betas", "β₂", "0.999", index=1, levels=True),
             Hyper("eps", "ε", "1e-8"))
_ADAM_PROBE = {"betas": ["4/5", "99/100"], "eps": "1/1000000", "weight_decay": "1/100"}

FAMILIES: dict[str, Family] = {
    "sgd": Family("SGD (momentum, Nesterov, weight decay)",
                  ((_WEIGHT_DECAY,),
                   (Hyper("momentum", "Momentum β", 0, levels=True,
                          help="in [0, 1); e.g. 0.9 or 9/10 (exact for the exact theory)"),),
                   (Hyper("nesterov", "Nesterov", False, kind="flag", help="needs β > 0"),)),
                  {"name": "sgd", "momentum": "1/2", "nesterov": True, "weight_decay": "1/100"},
                  "SGD (dampening 0): d = g + λw, v ← βv + d (v₁ = d₀), step v (or d + βv with Nesterov), "
                  "w ← w − α·step."),
    "adam": Family("Adam (L2 weight decay)", ((_WEIGHT_DECAY,), _ADAM_ROW), {"name": "adam", **_ADAM_PROBE},
                   "Adam: torch.optim.Adam with bias correction, d = g + λw."),
    "adamw": Family("AdamW (decoupled weight decay)", ((_WEIGHT_DECAY,), _ADAM_ROW), {"name": "adamw", **_ADAM_PROBE},
                    "AdamW: torch.optim.AdamW, w ← w(1 − αλ) before Adam's step."),
}
NAMES = tuple(FAMILIES)
LEVEL_FIELDS = tuple(dict.fromkeys(k for f in FAMILIES.values() for k in f.level_fields))


class Transform(Protocol):
    """A gradient transform: its state's keys start with ``prefix + "."``."""

    def init(self, params: Params) -> State: ...

    def update(self, updates: Params, state: State, params: Params, t: int | torch.Tensor) -> Params: ...


class Rule(Protocol):
    """The last piece: applies the transformed updates to the parameters, in place, with step size α_t."""

    def init(self, params: Params) -> State: ...

    def apply(self, params: Params, updates: Params, state: State, lr: Rate, t: int | torch.Tensor) -> None: ...


class Scratch:
    """Work buffers a piece reuses from step to step instead of allocating temporaries (for a wide model each one is
    a pass of the parameters' size): allocated at a piece's first step, again only if a tensor's shape, dtype or
    device changes. Not optimizer state: never checkpointed, and empty again when pickled or copied. A piece is used
    by one run at a time (each run builds its own optimizer)."""

    def __init__(self) -> None:
        self.buffers: dict[str, torch.Tensor] = {}

    def __reduce__(self):
        return (Scratch, ())

    def like(self, key: str, t: torch.Tensor) -> torch.Tensor:
        """A buffer of t's shape, dtype and device, one per ``key``."""
        buf = self.buffers.get(key)
        if buf is None or buf.shape != t.shape or buf.dtype != t.dtype or buf.device != t.device:
            buf = self.buffers[key] = torch.empty(t.shape, dtype=t.dtype, device=t.device)
        return buf

    def flat(self, key: str, size: int, t: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """A contiguous buffer shaped as t (in ``dtype``, t's by default): a view of one flat buffer of ``size``
        elements (≥ t's) per ``key``, shared by the tensors a piece works on one after another."""
        dtype = dtype or t.dtype
        buf = self.buffers.get(key)
        if buf is None or buf.numel() != size or buf.dtype != dtype or buf.device != t.device:
            buf = self.buffers[key] = torch.empty(size, dtype=dtype, device=t.device)
        return buf[:t.numel()].view(t.shape)


def _per_replica(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """x (N,) shaped to broadcast against ``like`` (N, …)."""
    return x.reshape(-1, *([1] * (like.dim() - 1)))


def _lanes(x: Rate | int, like: torch.Tensor) -> Rate | int:
    """A per-replica α_t or step count, a 1-d tensor (N,) (the cbs branches' lanes: backend/engine/replica_branch.py),
    shaped to broadcast against ``like`` (N, …), in its dtype; numbers and other tensors as they are."""
    return _per_replica(x, like).to(like.dtype) if isinstance(x, torch.Tensor) and x.dim() == 1 else x


@dataclass(frozen=True)
class ClipByReplicaNorm:
    """``torch.nn.utils.clip_grad_norm_`` per replica: g_r ← g_r · min(1, c / (‖g_r‖ + 10⁻⁶)), the norm over all of
    that replica's parameters (summed in float64)."""

    max_norm: float
    scratch: "Scratch" = field(default_factory=lambda: Scratch(), init=False, repr=False, compare=False)

    def init(self, params: Params) -> State:
        return {}

    def update(self, updates: Params, state: State, params: Params, t: int | torch.Tensor) -> Params:
        """The clipped gradients written into this piece's buffers (one per parameter, reused every step); the
        squared norms go through one flat float64 buffer of the largest gradient's size."""
        size = max(g.numel() for g in updates.values())
        sq = 0
        for g in updates.values():
            g64 = self.scratch.flat("sq", size, g, torch.float64).copy_(g).square_()  # g.to(float64).square()
            sq = sq + g64.reshape(g.shape[0], -1).sum(dim=1)
        scale = (self.max_norm / (sq.sqrt() + 1e-6)).clamp(max=1.0)
        return {k: torch.mul(g, _per_replica(scale.to(g.dtype), g), out=self.scratch.like(k, g))
                for k, g in updates.items()}


@dataclass(frozen=True)
class AddDecayedWeights:
    """L2 weight decay, coupled (SGD's and Adam's ``weight_decay``): d = g + λ w."""

    weight_decay: float
    scratch: "Scratch" = field(default_factory=lambda: Scratch(), init=False, repr=False, compare=False)

    def init(self, params: Params) -> State:
        return {}

    def update(self, updates: Params, state: State, params: Params, t: int | torch.Tensor) -> Params:
        """d = g + λ w written into this piece's buffers (one per parameter, reused every step: no temporaries);
        the returned updates are those buffers, valid until its next update."""
        return {k: torch.add(u, params[k], alpha=self.weight_decay, out=self.scratch.like(k, u))
                for k, u in updates.items()}


@dataclass(frozen=True)
class Trace:
    """Heavy-ball momentum with torch.optim.SGD's buffer (dampening 0): v ← β v + d (v starts at 0, so v_1 = d_0);
    the update is v, or d + β v with Nesterov. State ``momentum.<name>``, updated in place."""

    momentum: float
    nesterov: bool = False
    scratch: "Scratch" = field(default_factory=lambda: Scratch(), init=False, repr=False, compare=False)
    prefix = "momentum"

    def init(self, params: Params) -> State:
        return {f"{self.prefix}.{k}": torch.zeros_like(p) for k, p in params.items()}

    def update(self, updates: Params, state: State, params: Params, t: int | torch.Tensor) -> Params:
        out = {}
        for k, d in updates.items():
            buf = state[f"{self.prefix}.{k}"]
            buf.mul_(self.momentum).add_(d)
            # Nesterov's d + β v into this piece's buffer (reused every step), valid until its next update
            out[k] = torch.add(d, buf, alpha=self.momentum, out=self.scratch.like(k, d)) if self.nesterov else buf
        return out


@dataclass(frozen=True)
class SGDStep:
    """w ← w − α u, one fused pass per tensor (``torch.add(w, u, alpha=−α)`` as torch.optim.SGD; with a tensor α,
    ``addcmul(w, u, α, value=−1)`` as the fused linear-regression steps)."""

    def init(self, params: Params) -> State:
        return {}

    def apply(self, params: Params, updates: Params, state: State, lr: Rate, t: int | torch.Tensor) -> None:
        for k, p in params.items():
            if isinstance(lr, torch.Tensor):
                p.addcmul_(updates[k], _lanes(lr, p), value=-1.0)
            else:
                p.add_(updates[k], alpha=-lr)


@dataclass(frozen=True)
class AdamStep:
    """Adam's step on updates d (the gradient, or g + λw for Adam's L2): m ← β₁ m + (1 − β₁) d,
    v ← β₂ v + (1 − β₂) d², then w ← w (1 − α λ_dec) [AdamW] and w ← w − (α m̂) / (√v̂ + ε) with
    m̂ = m / (1 − β₁^{t+1}), v̂ = v / (1 − β₂^{t+1}). State ``m.<name>``, ``v.<name>``, updated in place."""

    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    decoupled_weight_decay: float = 0.0
    scratch: "Scratch" = field(default_factory=lambda: Scratch(), init=False, repr=False, compare=False)

    def init(self, params: Params) -> State:
        state = {}
        for k, p in params.items():
            state[f"m.{k}"] = torch.zeros_like(p)
            state[f"v.{k}"] = torch.zeros_like(p)
        return state

    def apply(self, params: Params, updates: Params, state: State, lr: Rate, t: int | torch.Tensor) -> None:
        """In place: the step's α m̂ and √v̂ + ε go through two flat buffers of the largest parameter's size, kept by
        this piece and reused by every parameter and step (the same operations in the same order as
        ``a * (m / e1) / ((v / e2).sqrt() + eps)``, so the same bits, without per-step temporaries)."""
        b1, b2 = self.b1, self.b2
        c1, c2 = 1 - b1 ** (t + 1), 1 - b2 ** (t + 1)
        size = max(p.numel() for p in params.values())
        for k, p in params.items():
            d, m, v = updates[k], state[f"m.{k}"], state[f"v.{k}"]
            a, e1, e2 = _lanes(lr, p), _lanes(c1, p), _lanes(c2, p)
            m.mul_(b1).add_(d, alpha=1 - b1)
            v.mul_(b2).addcmul_(d, d, value=1 - b2)
            if self.decoupled_weight_decay:
                p.mul_(1 - a * self.decoupled_weight_decay)
            step = torch.div(m, e1, out=self.scratch.flat("step", size, p)).mul_(a)  # α m̂
            den = torch.div(v, e2, out=self.scratch.flat("den", size, p)).sqrt_().add_(self.eps)  # √v̂ + ε
            p.sub_(step.div_(den))


@dataclass(frozen=True)
class Optimizer:
    """A chain: ``transforms`` in order on the gradient, then ``rule`` on the parameters."""

    transforms: tuple[Transform, ...]
    rule: Rule

    def init(self, params: Params) -> State:
        """The state of every piece (zeros shaped as the parameters), one flat dict."""
        state: State = {}
        for piece in (*self.transforms, self.rule):
            part = piece.init(params)
            clash = sorted(set(part) & set(state))
            if clash:
                raise ValueError(f"two pieces of the chain keep state under the same names: {clash}")
            state.update(part)
        return state

    def step(self, params: Params, grads: Params, state: State, lr: Rate, t: int | torch.Tensor) -> Params:
        """One step at step size α_t = ``lr``, the t-th (0-based); parameters and state in place. Returns ``params``."""
        updates = grads
        for piece in self.transforms:
            updates = piece.update(updates, state, params, t)
        self.rule.apply(params, updates, state, lr, t)
        return params

    @property
    def plain(self) -> bool:
        """Plain SGD, w − α g: the engines' fused fast paths compute the same numbers."""
        return not self.transforms and isinstance(self.rule, SGDStep)


def clip_by_replica_norm(max_norm: float) -> ClipByReplicaNorm:
    return ClipByReplicaNorm(float(max_norm))


def add_decayed_weights(weight_decay: float) -> AddDecayedWeights:
    return AddDecayedWeights(float(weight_decay))


def trace(momentum: float, nesterov: bool = False) -> Trace:
    return Trace(float(momentum), bool(nesterov))


def _clip(clip: float | None) -> tuple[Transform, ...]:
    return () if clip is None else (clip_by_replica_norm(clip),)


def sgd(momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0, clip: float | None = None
        ) -> Optimizer:
    """torch.optim.SGD (dampening 0), with per-replica gradient clipping first when ``clip`` is set."""
    pieces = _clip(clip)
    if weight_decay:
        pieces += (add_decayed_weights(weight_decay),)
    if momentum:
        pieces += (trace(momentum, nesterov),)
    return Optimizer(pieces, SGDStep())


def adam(betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
         clip: float | None = None) -> Optimizer:
    """torch.optim.Adam (weight decay as L2 on the gradient), with per-replica gradient clipping first."""
    pieces = _clip(clip) + ((add_decayed_weights(weight_decay),) if weight_decay else ())
    return Optimizer(pieces, AdamStep(float(betas[0]), float(betas[1]), float(eps)))


def adamw(betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
          clip: float | None = None) -> Optimizer:
    """torch.optim.AdamW (decoupled weight decay; 0 by default here, torch's default is 0.01), with per-replica
    gradient clipping first."""
    return Optimizer(_clip(clip), AdamStep(float(betas[0]), float(betas[1]), float(eps), float(weight_decay)))


def _unit_interval(value: Any, field: str) -> Fraction | float:
    """A number in [0, 1) (a momentum, a beta), kept exact where it is given exactly."""
    x = parse_number(value, field)
    if not 0 <= x < 1:
        raise ConfigError(field, f"must be in [0, 1), got {jsonable_number(x)}")
    return x


@dataclass(frozen=True)
class OptimizerSpec:
    """A config's ``optimizer`` field: ``{"name": "sgd", "momentum": β, "nesterov": bool, "weight_decay": λ}`` or
    ``{"name": "adam" | "adamw", "betas": [β₁, β₂], "eps": ε, "weight_decay": λ}`` (or just the name). Numbers stay
    exact (Fractions) where they are given exactly, for the exact theory; ``build`` makes the replicas' optimizer."""

    name: str = "sgd"
    momentum: Fraction | float = Fraction(0)
    nesterov: bool = False
    weight_decay: Fraction | float = Fraction(0)
    betas: tuple[Fraction | float, Fraction | float] = (Fraction(9, 10), Fraction(999, 1000))
    eps: Fraction | float = Fraction(1, 10**8)

    @classmethod
    def parse(cls, raw: Any, field: str = "optimizer", names: tuple[str, ...] = NAMES) -> "OptimizerSpec":
        """Validated; a ConfigError naming the field otherwise. ``raw`` None is plain SGD; ``names``: the optimizers
        the setting can run (the others are refused naming ``<field>.name``)."""
        if raw is None:
            raw = {}
        f = Fields({"name": raw} if isinstance(raw, str) else raw, field)
        name = f.get("name", "sgd")
        if name in NAMES and name not in names:
            raise ConfigError(f.name("name"), f"this setting runs only {list(names)}, got {name!r}")
        name = read_choice(name, f.name("name"), names)
        weight_decay = read_positive(f.get("weight_decay", 0), f.name("weight_decay"), allow_zero=True)
        if name == "sgd":
            momentum = _unit_interval(f.get("momentum", 0), f.name("momentum"))
            nesterov = read_bool(f.get("nesterov", False), f.name("nesterov"))
            if nesterov and momentum == 0:
                raise ConfigError(f.name("nesterov"), "Nesterov needs a momentum > 0, got momentum 0")
            f.finish()
            return cls(name, momentum, nesterov, weight_decay)
        if name not in ("adam", "adamw"):
            raise NotImplementedError(f"optimizer {name!r} is in FAMILIES but OptimizerSpec.parse has no branch for it")
        betas = f.get("betas", cls.betas)
        if not isinstance(betas, (list, tuple)) or len(betas) != 2:
            raise ConfigError(f.name("betas"), f"expected [beta1, beta2], got {betas!r}")
        b = tuple(_unit_interval(x, f"{f.name('betas')}[{i}]") for i, x in enumerate(betas))
        eps = read_positive(f.get("eps", cls.eps), f.name("eps"))
        f.finish()
        return cls(name, weight_decay=weight_decay, betas=b, eps=eps)

    def to_json(self) -> dict[str, Any]:
        """The normalised form (exact numbers as "p/q" strings); ``parse(to_json())`` gives this spec back."""
        if self.name == "sgd":
            return {"name": "sgd", "momentum": jsonable_number(self.momentum), "nesterov": self.nesterov,
                    "weight_decay": jsonable_number(self.weight_decay)}
        if self.name in ("adam", "adamw"):
            return {"name": self.name, "betas": [jsonable_number(x) for x in self.betas],
                    "eps": jsonable_number(self.eps), "weight_decay": jsonable_number(self.weight_decay)}
        raise NotImplementedError(f"optimizer {self.name!r}: no branch in OptimizerSpec.to_json")

    @property
    def plain(self) -> bool:
        """Plain SGD (w − α g), the engines' fused fast paths."""
        return self.name == "sgd" and self.momentum == 0 and self.weight_decay == 0

    @property
    def state_tensors(self) -> int:
        """Parameter-sized state tensors per replica that ``build`` keeps (SGD's velocity 1 with momentum, Adam(W)'s
        m and v 2, plain SGD 0): counted on the built chain itself (its state keys of one parameter ``p``), for the
        cost models. Work buffers (``Scratch``: weight decay's, Nesterov's, Adam's two flat ones, clipping's) are not
        state and not counted here."""
        return sum(key.endswith(".p") for key in self.build().init({"p": torch.empty(0)}))

    def build(self, clip: float | None = None) -> Optimizer:
        """The optimizer over stacked replicas (float hyperparameters), per-replica clipping first when ``clip``."""
        if self.name == "sgd":
            return sgd(float(self.momentum), self.nesterov, float(self.weight_decay), clip)
        if self.name not in ("adam", "adamw"):
            raise NotImplementedError(f"optimizer {self.name!r}: no branch in OptimizerSpec.build")
        make = adam if self.name == "adam" else adamw
        return make((float(self.betas[0]), float(self.betas[1])), float(self.eps), float(self.weight_decay), clip)


def optimizer_of(config) -> OptimizerSpec:
    """A config's optimizer as a spec: its ``optimizer_spec`` where the setting keeps more in the field (the sequence
    model: lr, warm-up and clip beside the optimizer, AdamW's own fields), else its ``optimizer``."""
    spec = getattr(config, "optimizer_spec", None)
    return spec if isinstance(spec, OptimizerSpec) else config.optimizer


def is_plain(raw: Any) -> bool:
    """The ``optimizer`` value is plain SGD (w − α g; a page then leaves the field out); False when it does not
    parse (the config's validation names what is wrong)."""
    try:
        return OptimizerSpec.parse(raw).plain
    except ConfigError:
        return False
