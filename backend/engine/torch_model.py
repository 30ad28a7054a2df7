"""Your own model (docs/theory.md §10): a PyTorch model and its data from a Python file, trained as
K initial weights × R replicas stacked along a leading dimension (torch.func: functional_call + vmap, indices drawn
outside vmap from explicit generators), with the statistics of the MLP engine at t = 0, k, 2k, …, T.

The model file (loaded only from an allowed folder: backend/allowed.py) defines
  model(seed) → nn.Module        the network with init ``seed``'s weights (inits 0 … K−1), deterministic in seed;
  data() → {"train": (X, Y), "val": (X, Y)}   tensors ("val" optional);
  loss(output, target) → (b,)    optional, per-sample losses (default: the cross-entropy, integer targets);
  checkpoint() → state_dict      optional: every init starts from it (branching from a trained model).
A failing file raises one ConfigError naming the file and the function. Modules torch.func cannot run as they are
are refused naming the module: BatchNorm in train mode (its batch statistics couple the samples of a batch and its
running statistics are updated in place), Dropout in train mode with p > 0 (the variance would include dropout's
noise: call .eval() or set p = 0), and any module whose forward writes a buffer in place.

Per recorded step t and init k (over its R replicas), as backend/engine/mlp.py: var_g (a fresh uniform b-subset's
gradient from a separate probe generator, Lemma 1 at t = 0), loss and error (class targets) on the training and
validation sets, the one-step noise c_b tr Σ̂, the spread of ∇L_S and B_simple from per-sample gradients on a fixed
subsample (backend/engine/noise.py, backend/stats.py: subsample_noise).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib.util
import os
import site
import sys
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import numpy as np
import torch
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode

from backend import allowed
from backend.engine.mlp import EpochStats, flat
from backend.engine.noise import per_sample_dots, per_sample_terms
from backend.engine.replicas import Replicas
from backend.engine.loop import RunSpec, record_steps, train_loop
from backend.engine.runner import ACTIVATION_ELEMENTS, precision, schedule_segments
from backend.errors import ConfigError
from backend.quantities import EPOCH_QUANTITIES
from backend.stats import GroupMoments, Groups, subsample_noise, variance_se

ESTIMATED = tuple(q.name for q in EPOCH_QUANTITIES if q.name != "gap_distorted")  # the table; no distorted set
CHECK_POINTS = 1024  # training points on which the loss at w_0 is checked (finite) when the file is loaded


def fail(path: Path, function: str, message: str) -> ConfigError:
    """The one-line error of a failing model file: the file and the function."""
    return ConfigError("model.file", f"{path.name}: {function}: {message}")


def _why(e: BaseException) -> str:
    text = " ".join(f"{type(e).__name__}: {e}".split())  # one line, whitespace collapsed
    return text if len(text) <= 400 else text[:399] + "…"


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tensors_sha256(tensors) -> str:
    """sha256 over (dtype, shape, bytes) of the tensors in order."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update((t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy().tobytes())
    return h.hexdigest()


def import_file(path: Path, sha: str) -> ModuleType:
    """The model file run as a module (its own name per content hash); an error names the file."""
    name = f"batchvar_model_{sha[:16]}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise fail(path, "import", "not a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look modules up by name
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # a user's file may raise anything
        sys.modules.pop(name, None)
        raise fail(path, "import", _why(e)) from None
    return module


@dataclass
class ModelFile:
    """A validated model file: its functions' results on the CPU and what the setting's estimate needs."""

    path: Path
    sha256: str  # the file's content hash, with its own helper modules' where it imports any (code_sha256)
    data_sha256: str
    module: ModuleType
    template: torch.nn.Module  # init 0's module (or the checkpoint's), CPU
    Xtr: torch.Tensor
    Ytr: torch.Tensor
    Xva: torch.Tensor | None
    Yva: torch.Tensor | None
    loss: Callable
    checkpoint: dict | None
    classes: bool
    n_params: int
    act_per_sample: int
    flops_per_sample: float  # one forward pass (a gradient: about 3×)
    trainable: tuple[str, ...] = field(default=())
    read_files: tuple[str, ...] = field(default=())  # what its functions opened outside Python (load's signature)
    modules: dict[str, str] = field(default_factory=dict)  # its own helper modules: name → source (in sha256)

    @property
    def n_train(self) -> int:
        return int(self.Xtr.shape[0])

    @property
    def n_val(self) -> int:
        return 0 if self.Xva is None else int(self.Xva.shape[0])


def _default_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(output, target, reduction="none")


def _pair(path: Path, split: Any, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(split, (tuple, list)) or len(split) != 2 or not all(isinstance(t, torch.Tensor) for t in split):
        raise fail(path, "data()", f"{name!r} must be a pair (inputs, targets) of tensors")
    X, Y = (t.detach().cpu() for t in split)
    if X.dim() == 0 or Y.dim() == 0 or X.shape[0] != Y.shape[0]:
        raise fail(path, "data()", f"{name!r}: inputs and targets need the same first dimension (samples), got "
                                   f"{tuple(X.shape)} and {tuple(Y.shape)}")
    return X, Y


def read_data(path: Path, module: ModuleType):
    try:
        out = module.data()
    except Exception as e:
        raise fail(path, "data()", _why(e)) from None
    if not isinstance(out, dict) or "train" not in out or set(out) - {"train", "val"}:
        raise fail(path, "data()", 'must return {"train": (inputs, targets), "val": (inputs, targets)} ("val" '
                                   "optional)")
    Xtr, Ytr = _pair(path, out["train"], "train")
    if Xtr.shape[0] < 2:
        raise fail(path, "data()", f"'train' needs at least 2 samples, got {Xtr.shape[0]}")
    Xva, Yva = _pair(path, out["val"], "val") if out.get("val") is not None else (None, None)
    return Xtr, Ytr, Xva, Yva


def call_model(path: Path, module: ModuleType, seed: int) -> torch.nn.Module:
    try:
        m = module.model(seed)
    except Exception as e:
        raise fail(path, f"model({seed})", _why(e)) from None
    if not isinstance(m, torch.nn.Module):
        raise fail(path, f"model({seed})", f"must return a torch.nn.Module, got {type(m).__name__}")
    m = m.cpu()
    if not any(p.requires_grad for p in m.parameters()):
        raise fail(path, f"model({seed})", "the module has no trainable parameters")
    if any(not p.is_floating_point() for p in m.parameters()):
        raise fail(path, f"model({seed})", "every parameter must be a floating-point tensor")
    return m


def refuse_modules(path: Path, m: torch.nn.Module) -> None:
    """BatchNorm and Dropout (p > 0) in train mode are refused, naming the module (docs/theory.md §10)."""
    for name, sub in m.named_modules():
        kind = type(sub).__name__
        if isinstance(sub, torch.nn.modules.batchnorm._BatchNorm) and sub.training:
            raise fail(path, "model()", f"module {name!r} ({kind}) is in train mode: its batch statistics couple the "
                                        "samples of a batch and its running statistics are updated in place, which "
                                        "torch.func cannot vectorise over replicas; call .eval() on it or use "
                                        "GroupNorm/LayerNorm")
        if isinstance(sub, torch.nn.modules.dropout._DropoutNd) and sub.training and sub.p > 0:
            raise fail(path, "model()", f"module {name!r} ({kind}, p = {sub.p:g}) is in train mode: the variance "
                                        "would include dropout's noise, which this setting does not measure; call "
                                        ".eval() on it or set p = 0")


def _owner(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else "(the model itself)"


def trial_forward(path: Path, m: torch.nn.Module, X: torch.Tensor, Y: torch.Tensor, loss: Callable
                  ) -> tuple[torch.Tensor, int, float]:
    """One forward of a copy on two samples: the output, its loss shape (per sample), no buffer written in place;
    returns (output, activations per sample: the elements of every submodule's output, forward FLOPs per sample
    as torch.utils.flop_counter counts them)."""
    probe = copy.deepcopy(m).float()  # as the run casts it (its dtype), float32 here
    X, Y = _cast_input(X[:2], torch.float32), _cast_input(Y[:2], torch.float32)
    before = {n: b.clone() for n, b in probe.named_buffers()}
    versions = {n: b._version for n, b in probe.named_buffers()}
    sizes: list[int] = []
    hooks = [sub.register_forward_hook(lambda _m, _i, o: sizes.append(o.numel() if isinstance(o, torch.Tensor)
                                                                      else 0)) for sub in probe.modules()]
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            out = probe(X[:2])
    except Exception as e:
        raise fail(path, "model() forward", _why(e)) from None
    finally:
        for h in hooks:
            h.remove()
    for n, b in probe.named_buffers():
        if b._version != versions[n] or not torch.equal(b, before[n]):
            raise fail(path, "model()", f"module {_owner(n)!r} writes its buffer {n!r} in place during the forward "
                                        "pass, which torch.func cannot run over replicas")
    if not isinstance(out, torch.Tensor):
        raise fail(path, "model() forward", f"must return a tensor, got {type(out).__name__}")
    try:
        per = loss(out, Y[:2])
    except Exception as e:
        raise fail(path, "loss()", _why(e)) from None
    if not isinstance(per, torch.Tensor) or tuple(per.shape) != (2,) or not per.is_floating_point():
        raise fail(path, "loss()", "must return one floating-point loss per sample (shape (b,)), got "
                                   f"{getattr(per, 'shape', type(per).__name__)}")
    return out, max(1, sum(sizes) // 2), counter.get_total_flops() / 2


def functional(template: torch.nn.Module, dtype: torch.dtype, device: torch.device):
    """(forward(params, x), {name: trainable parameter}): forward runs ``template``'s code with the parameters given
    (torch.func.functional_call) and its constants (buffers, frozen parameters) held on ``device``."""
    model = copy.deepcopy(template)
    trainable = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    consts = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    consts.update(dict(model.named_buffers()))
    cast = lambda t: t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)  # noqa: E731
    consts = {n: cast(t) for n, t in consts.items()}
    memo = {id(p): torch.nn.Parameter(p.detach().to("meta"), p.requires_grad) for p in model.parameters()}
    memo.update({id(b): b.detach().to("meta") for b in model.buffers()})
    meta = copy.deepcopy(model, memo)
    return (lambda params, x: functional_call(meta, (params, consts), (x,))), trainable


def trial_replicas(path: Path, template: torch.nn.Module, X: torch.Tensor, Y: torch.Tensor, loss: Callable) -> None:
    """The torch.func path itself (vmap over 2 stacked copies, per-sample gradients) on two samples."""
    try:
        forward, params = functional(template, torch.float32, torch.device("cpu"))
        stacked = {n: p.float()[None].repeat(2, *([1] * p.dim())) for n, p in params.items()}
        x = _cast_input(X[:2], torch.float32)
        y = _cast_input(Y[:2], torch.float32)
        rep = Replicas(forward, None, loss)
        g, _ = rep.grad_and_loss(stacked, x[None].expand(2, *x.shape), y[None].expand(2, *y.shape))
        rep.per_sample_replicas(stacked, x, y)
    except Exception as e:
        if "randomness" in str(e) and "vmap" in str(e):  # torch.func's refusal of a random op (error mode)
            raise fail(path, "model() forward", "draws random numbers (functional dropout, randn_like, …): the "
                                                "variance would include that noise, which this setting does not "
                                                "measure; make the forward deterministic (dropout off)") from None
        raise fail(path, "model() under torch.func (vmap over replicas)", _why(e)) from None


def _cast_input(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t.to(dtype) if t.is_floating_point() else t


def read_checkpoint(path: Path, module: ModuleType, m: torch.nn.Module) -> dict | None:
    if not hasattr(module, "checkpoint"):
        return None
    try:
        state = module.checkpoint()
    except Exception as e:
        raise fail(path, "checkpoint()", _why(e)) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise fail(path, "checkpoint()", "must return a state_dict (a dict of tensors)")
    try:
        m.load_state_dict(state, strict=True)
    except Exception as e:
        raise fail(path, "checkpoint()", _why(e)) from None
    return {k: v.detach().cpu().clone() for k, v in state.items()}


def check_loss_at_w0(path: Path, m: torch.nn.Module, X: torch.Tensor, Y: torch.Tensor, loss: Callable,
                     function: str = "loss()") -> None:
    """The loss of ``m`` (in float32) finite on the first CHECK_POINTS training points; else one line naming
    ``function``."""
    m = copy.deepcopy(m).float()
    X, Y = _cast_input(X[:CHECK_POINTS], torch.float32), _cast_input(Y[:CHECK_POINTS], torch.float32)
    with torch.no_grad():
        per = torch.cat([loss(m(X[s:s + 256]), Y[s:s + 256]) for s in range(0, min(len(X), CHECK_POINTS), 256)])
    if not torch.isfinite(per).all():
        raise fail(path, function, "the loss at w_0 is not finite on the training data")


def _same_params(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    pa, pb = dict(a.state_dict()), dict(b.state_dict())
    return pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)


def validate(path: Path) -> ModelFile:
    """Import and check a model file (see the module doc); cached per content (``load``)."""
    sha = file_sha256(path)
    module = import_file(path, sha)
    for fn in ("model", "data"):
        if not callable(getattr(module, fn, None)):
            raise fail(path, f"{fn}()", "missing: a model file defines model(seed) and data()")
    for fn in ("loss", "checkpoint"):
        if hasattr(module, fn) and not callable(getattr(module, fn)):
            raise fail(path, f"{fn}()", "must be a function")
    Xtr, Ytr, Xva, Yva = read_data(path, module)
    m = call_model(path, module, 0)
    if not _same_params(m, call_model(path, module, 0)):
        raise fail(path, "model(0)", "two calls give different weights: seed the initial weights from its argument")
    ckpt = read_checkpoint(path, module, m)
    refuse_modules(path, m)
    loss = getattr(module, "loss", None) or _default_loss
    out, act, flops = trial_forward(path, m, Xtr, Ytr, loss)
    if Xva is not None:
        trial_forward(path, m, Xva, Yva, loss)
    check_loss_at_w0(path, m, Xtr, Ytr, loss)
    trial_replicas(path, m, Xtr, Ytr, loss)
    classes = (not Ytr.is_floating_point() and not Ytr.is_complex() and out.dim() == Ytr.dim() + 1
               and tuple(out.shape[:-1]) == tuple(Ytr[:2].shape))
    parts = [Xtr, Ytr] + ([Xva, Yva] if Xva is not None else [])
    data_sha = tensors_sha256(parts + ([] if ckpt is None else [ckpt[k] for k in sorted(ckpt)]))
    trainable = tuple(n for n, p in m.named_parameters() if p.requires_grad)
    n_params = sum(p.numel() for p in m.parameters() if p.requires_grad)
    return ModelFile(path, sha, data_sha, module, m, Xtr, Ytr, Xva, Yva, loss, ckpt, classes, n_params, act,
                     max(float(flops), 2.0 * n_params), trainable)


def _stats(paths) -> tuple:
    """(path, mtime, size) of each path (None for one that is gone)."""
    out = []
    for p in paths:
        try:
            st = os.stat(p)
            out.append((p, st.st_mtime_ns, st.st_size))
        except OSError:
            out.append((p, None))
    return tuple(out)


def _folder_signature(path: Path) -> tuple:
    """(path, mtime, size) of the files beside the model file (one that appears or goes counts too)."""
    return _stats(sorted(str(p) for p in path.parent.iterdir()))


_reading = threading.local()  # the files opened by the model file's functions while it is validated (this thread)
_PYTHON = tuple({os.path.realpath(p) + os.sep for p in (sys.prefix, sys.base_prefix, sys.exec_prefix,
                                                         *site.getsitepackages(), site.getusersitepackages())})
_PROJECT = os.path.realpath(allowed.ROOT) + os.sep  # the project's own code: in the cache key's code version
MAX_READ_FILES = 10_000


def _on_audit(event: str, args: tuple) -> None:
    """The interpreter's audit hook (sys.addaudithook; every ``open`` event: open(), io.open_code, os.open): while a
    model file is validated on this thread, the paths it opens outside the Python installation."""
    if event != "open":
        return
    paths = getattr(_reading, "paths", None)
    if paths is not None and len(paths) < MAX_READ_FILES and isinstance(args[0], (str, bytes, os.PathLike)):
        p = os.path.realpath(os.fsdecode(args[0]))
        if not p.startswith(_PYTHON) and not p.startswith(("/proc/", "/sys/", "/dev/")):
            paths.add(p)


sys.addaudithook(_on_audit)
_loaded: OrderedDict[str, tuple[tuple, ModelFile]] = OrderedDict()  # the 8 files loaded last, with their signatures
_loaded_lock = threading.Lock()
_validating = threading.Lock()  # validations one at a time (they set sys.modules and sys.pycache_prefix aside)


def _signature(path: Path, read: tuple[str, ...]) -> tuple:
    return file_sha256(path), _folder_signature(path), _stats(read)


def _source(module: ModuleType | None) -> str | None:
    """The real path of a module's file when it is the user's code: outside the Python installation (and its site
    folders), and outside the project unless in an allowed model folder (the project's own code is in the cache
    key's code version); else None."""
    f = getattr(module, "__file__", None)
    if not isinstance(f, str):
        return None
    p = os.path.realpath(f)
    if p.startswith(_PYTHON) or not os.path.isfile(p):
        return None
    if p.startswith(_PROJECT) and not any(p.startswith(str(d) + os.sep) for d in allowed.model_folders()):
        return None
    return p


def _user_modules() -> dict[str, ModuleType]:
    return {n: m for n, m in list(sys.modules.items()) if _source(m) is not None}


@contextlib.contextmanager
def fresh_imports():
    """While a model file is validated: the user's modules (``_source``) out of sys.modules and bytecode caches
    read from an empty folder (sys.pycache_prefix), so that every helper the file imports — at its top or inside
    its functions, whatever imported it before — runs from its source as in a fresh process (a .pyc is matched to
    its source by whole-second mtime and size only). Yields {name: source} of the helpers imported meanwhile;
    afterwards the modules set aside that were not imported again are put back."""
    saved = _user_modules()
    for name in saved:
        sys.modules.pop(name, None)
    prefix = sys.pycache_prefix
    found: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="batchvar-pyc-") as tmp:
        sys.pycache_prefix = tmp
        try:
            yield found
            found.update({n: _source(m) for n, m in _user_modules().items()})
        finally:
            sys.pycache_prefix = prefix
            for name, module in saved.items():
                sys.modules.setdefault(name, module)


def code_sha256(path: Path, modules: dict[str, str]) -> str:
    """The model file's sha256, or — where it uses modules of its own — sha256 over the file's and each module's
    (name, bytes) in name order: an edited helper module changes the cache key as an edited file does."""
    if not modules:
        return file_sha256(path)
    h = hashlib.sha256(path.read_bytes())
    for name, source in modules.items():
        h.update(f"\0{name}\0".encode())
        h.update(Path(source).read_bytes())
    return h.hexdigest()


def load(path: Path) -> ModelFile:
    """The validated model file at ``path`` (an allowed path: backend/allowed.model_file), loaded once per content
    of the file and state of what it reads: it is validated again (its data hashed again) when the file, a file
    beside it, any file its functions opened (data or a checkpoint in another folder; seen by the audit hook) or
    any of its own helper modules (fresh_imports: imported again then) changes. A failing file raises (and is not
    remembered)."""
    key = str(path)
    with _loaded_lock:
        hit = _loaded.get(key)
    if hit is not None and hit[0] == _signature(path, hit[1].read_files):
        with _loaded_lock:
            _loaded.move_to_end(key)
        return hit[1]
    with _validating, fresh_imports() as helpers:  # one validation at a time: sys.modules is the process's
        _reading.paths = set()
        try:
            mf = validate(path)
        finally:
            read_paths, _reading.paths = _reading.paths, None
    mf.modules = {n: p for n, p in sorted(helpers.items()) if n != mf.module.__name__}
    read = tuple(sorted((read_paths | set(mf.modules.values())) - {os.path.realpath(path)}))
    mf.sha256, mf.read_files = code_sha256(path, mf.modules), read
    with _loaded_lock:
        _loaded[key] = (_signature(path, read), mf)
        while len(_loaded) > 8:
            _loaded.popitem(last=False)
    return mf


# -- the replica run -----------------------------------------------------------------------------------------

def init_params(mf: ModelFile, K: int, dtype: torch.dtype, device: torch.device) -> dict[str, torch.Tensor]:
    """{name: (K, …)}: init k's weights from model(k), or the checkpoint for every init."""
    per_init = []
    for k in range(K):
        if mf.checkpoint is not None:
            m = mf.template
        else:
            m = mf.template if k == 0 else call_model(mf.path, mf.module, k)
        params = {n: p.detach() for n, p in m.named_parameters() if p.requires_grad}
        first = per_init[0] if per_init else params
        if tuple(params) != mf.trainable or any(params[n].shape != p.shape for n, p in first.items()):
            raise fail(mf.path, f"model({k})", "its parameters differ in names or shapes from model(0)'s")
        per_init.append(params)
    return {n: torch.stack([p[n] for p in per_init]).to(dtype=dtype, device=device) for n in mf.trainable}


def check_inits(mf: ModelFile, K: int) -> None:
    """model(k)'s loss at w_0 finite for every init k = 1 … K − 1 (init 0 and the checkpoint are checked when the
    file is loaded), before a run takes its first step."""
    if mf.checkpoint is not None:
        return
    for k in range(1, K):
        check_loss_at_w0(mf.path, call_model(mf.path, mf.module, k), mf.Xtr, mf.Ytr, mf.loss, f"model({k})")


@dataclass
class Prepared:
    """The model file's tensors on the run's device and dtype, and its replicas' functional forward."""

    mf: ModelFile
    forward: Callable
    Xtr: torch.Tensor
    Ytr: torch.Tensor
    Xva: torch.Tensor | None
    Yva: torch.Tensor | None
    dtype: torch.dtype


def prepare(mf: ModelFile, dtype: torch.dtype, device: torch.device) -> Prepared:
    forward, _ = functional(mf.template, dtype, device)
    on = lambda t: None if t is None else _cast_input(t, dtype).to(device)  # noqa: E731
    return Prepared(mf, forward, on(mf.Xtr), on(mf.Ytr), on(mf.Xva), on(mf.Yva), dtype)


def replica_block(act: int, N: int, b: int) -> int | None:
    """Replicas per vectorised call: all N unless their activations on b samples exceed ACTIVATION_ELEMENTS."""
    c = max(1, ACTIVATION_ELEMENTS // (max(b, 1) * act))
    return None if c >= N else c


def evaluate(rep: Replicas, pr: Prepared, params, X: torch.Tensor, Y: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per replica: the mean loss on (X, Y) and, for class targets, the mean error (argmax ≠ target, averaged over
    any positions), a chunk of points at a time (float64 sums)."""
    N = next(iter(params.values())).shape[0]
    chunk = max(1, min(4096, ACTIVATION_ELEMENTS // (N * pr.mf.act_per_sample)))
    loss = torch.zeros(N, dtype=torch.float64, device=X.device)
    err = torch.zeros(N, dtype=torch.float64, device=X.device)
    for s in range(0, X.shape[0], chunk):
        out = rep.logits(params, X[s:s + chunk])  # (N, c, …)
        y = Y[s:s + chunk]
        c = y.shape[0]
        flat_out = out.reshape(N * c, *out.shape[2:])
        per = pr.mf.loss(flat_out, y.repeat(N, *([1] * (y.dim() - 1)))).reshape(N, c)
        loss += per.sum(1, dtype=torch.float64)
        if pr.mf.classes:
            wrong = (out.argmax(dim=-1) != y).to(torch.float64)
            err += wrong.reshape(N, c, -1).mean(2).sum(1)
    n = X.shape[0]
    return loss / n, (err / n if pr.mf.classes else None)


class ModelRun:
    """Your model's pieces of the shared loop (loop.Engine): K·R replicas' weights (init k's repeated R times),
    vmap(grad) and ``optimizer``'s step (backend/optim.py, one over the stack), the statistics of a record point."""

    def __init__(self, pr: Prepared, spec: RunSpec, optimizer) -> None:
        self.pr, self.optimizer, self.R = pr, optimizer, spec.R
        self.arithmetic, self.device, self.n = spec.precision, spec.device, spec.n
        sub = spec.noise_subset()
        self.XS, self.YS = pr.Xtr[sub], pr.Ytr[sub]
        self.inits = Groups.blocks(spec.K, spec.R, spec.device)  # the statistics groups: one per init, its R replicas
        segments, _ = schedule_segments(spec.b, spec.steps)
        self.rep = Replicas(pr.forward, replica_block(pr.mf.act_per_sample, spec.N, max(bj for bj, _ in segments)),
                            pr.mf.loss)
        params = init_params(pr.mf, spec.K, pr.dtype, spec.device)  # also on resume: model(k)'s checks
        self.params = {k: v.repeat_interleave(spec.R, dim=0).contiguous() for k, v in params.items()}
        self.opt_state = optimizer.init(self.params)
        self.stats = EpochStats.empty(len(spec.record_at), spec.K).values
        if spec.resume is not None:
            self.params, self.opt_state = spec.restored("params"), spec.restored("opt")
            self.stats = {k: v.copy() for k, v in spec.resume["stats"].items()}

    def step(self, idx: torch.Tensor, t: int, lr: float) -> torch.Tensor:
        with precision(self.arithmetic, self.device):
            g, loss = self.rep.grad_and_loss(self.params, self.pr.Xtr[idx], self.pr.Ytr[idx])
        self.optimizer.step(self.params, g, self.opt_state, lr, t)
        return loss

    def settle(self) -> None:
        pass

    def record(self, i: int, idx: torch.Tensor, b: int, alive: torch.Tensor) -> None:
        pr, rep, params, inits, put = self.pr, self.rep, self.params, self.inits, self.stats

        def keep(name: str, value_se: tuple[np.ndarray, np.ndarray]) -> None:
            put[name][i], put[f"{name}_se"][i] = value_se

        with precision(self.arithmetic, self.device):  # the stochastic gradient as training computes it
            g, _ = rep.grad_and_loss(params, pr.Xtr[idx], pr.Ytr[idx])
        keep("var_g", variance_se(flat(g), inits, alive))
        sq, full = per_sample_terms(rep, params, self.XS, self.YS)
        keep("noise_spread", variance_se(full, inits, alive))
        dots = per_sample_dots(rep, params, self.XS, self.YS, full)  # a second pass: g_i · ∇L_S, S's error
        for name, value_se in subsample_noise(sq, dots, full, inits, alive, self.n, b).items():
            keep(name, value_se)  # trace_sigma, grad_sq, noise_one_step, b_simple
        for split, X, Y in (("train", pr.Xtr, pr.Ytr), ("val", pr.Xva, pr.Yva)):
            if X is None:
                continue
            loss, err = evaluate(rep, pr, params, X, Y)
            keep(f"loss_{split}", GroupMoments.of(loss, inits, alive).mean_se())
            if err is not None:
                keep(f"error_{split}", GroupMoments.of(err, inits, alive).mean_se())
        put["finite"][i] = GroupMoments.of(alive.to(torch.float64), inits, torch.ones_like(alive)).mean_se()[0] * self.R

    def position(self, t: int) -> dict:
        return {"step": t}

    def start(self, resume: dict) -> int:
        return int(resume["step"])


def run_batch_size(pr: Prepared, spec: RunSpec, optimizer) -> dict:
    """Train the K·R replicas of ``spec`` (RunSpec.for_steps) with ``optimizer`` (backend/optim.py, one over the
    stack) through loop.train_loop (ModelRun's step); per-init statistics at t = spec.record_at:
    arrays (len(t), K) (see module doc). ``spec.b`` a list of (b_i, steps_i): a batch-size schedule (docs/theory.md §12;
    Σ steps_i = T), its segments one after another, the weights and the optimizer's state carried on; g_t (the
    probe, the one-step noise's c_b) at the b of the segment that draws it, the last one's at t = T. Segment 0
    draws from the streams of the constant b_0 run, segment j > 0 from its own (one segment is exactly the
    constant-b run).

    ``spec.checkpoint(state)``: called with the run's whole state (weights, optimizer state, statistics so far, the
    generators, the first bad steps) at the end of a block of steps (runner.checkpoint_due) and at t = T;
    ``spec.resume``: such a state (runner.unpack_checkpoint), from which the run continues bitwise."""
    return {**train_loop(spec, ModelRun(pr, spec, optimizer)), "t": np.asarray(spec.record_at)}


def estimate_cost(mf_sizes: dict[str, int], K: int, R: int, steps: int, record_every: int, b: int,
                  noise_samples: int, bytes_per: int) -> dict[str, float]:
    """Memory, 2-core CPU seconds, FLOPs and sequential steps of one batch size (``mf_sizes``: n_params, n_train,
    n_val, act_per_sample, flops_per_sample). FLOPs: F per sample and replica for a forward (counted on the file's
    model when it is loaded, at least 2 P), 3 F for a gradient."""
    P, n, n_val, act, F = (mf_sizes[k] for k in ("n_params", "n_train", "n_val", "act_per_sample",
                                                 "flops_per_sample"))
    N = K * R
    m = min(noise_samples, n)
    records = len(record_steps(steps, record_every))
    train = 3.0 * F * b * N * steps
    per_sample = 3.0 * F * N * 2 * m  # the two passes of per-sample gradients (noise.py) on the subsample
    stats = 3.0 * F * N * b + per_sample + F * N * (n + n_val)
    # 2 CPU cores: ≈ 1.5·10¹⁰ FLOP/s for a vmapped gradient of a small model plus ≈ 3 ms a step (the vmapped call's
    # small ops); per-sample gradients (vmap of vmap, float64 reductions) at ≈ 3·10⁹; ≈ 0.05 s a statistics pass
    # beside its FLOPs; ≈ 0.5 s of set-up — fitted to the wall time of the MLP (2.5 s), CNN (3.4 s) and transformer
    # (5.1 s) examples' runs on a quiet 2-core box (load ≈ 2), each estimated within 10 %
    seconds = (0.5 + train / 1.5e10 + steps * 3e-3
               + records * (0.05 + per_sample / 3e9 + (stats - per_sample) / 1.5e10))
    chunk = max(1, min(64, 2**27 // max(1, N * P)))  # noise.noise_chunk
    block = min(N, max(1, ACTIVATION_ELEMENTS // (max(b, 1) * act)))
    memory = bytes_per * (N * P * 5 + block * b * act * 3) + 8.0 * N * P * 2 + bytes_per * N * P * chunk
    return {"memory_bytes": float(memory), "seconds": seconds, "flops": train + records * stats,
            "steps": float(steps + records * (4 + 2 * -(-m // chunk)))}
