"""Where code and data may be read from (README, *Where code and data may come from*).

Running a model file runs its code, so a model file is read only from an allowed folder: the project's
``examples/models/`` and the folders in ``$BATCHVAR_MODELS`` (``os.pathsep``-separated). The data paths the settings
accept (an IDX folder, a TSV/CSV corpus file) are confined the same way to the shipped data (``backend/data/``) and
the folders in ``$BATCHVAR_DATA``. A path is judged after ``~``, ``..`` and every symlink are resolved, so a symlink
that leads out of the folders is refused and one that stays inside them is allowed. A refusal is one ConfigError
line naming the field, raised before anything is opened or imported; it says that the path lies outside the folders,
never whether a file outside them exists. The environment is read at every call (a changed variable takes effect).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from backend.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "models"
SHIPPED_DATA = (Path(__file__).resolve().parent / "data",)
MODELS_ENV = "BATCHVAR_MODELS"
DATA_ENV = "BATCHVAR_DATA"
MODEL_FIELD = "model.file"
_DEFINES = (re.compile(r"^def model\(", re.M), re.compile(r"^def data\(", re.M))


def env_folders(variable: str) -> list[Path]:
    """The folders named in ``$variable`` (``os.pathsep``-separated, empty entries skipped), resolved."""
    return [Path(p).expanduser().resolve() for p in os.environ.get(variable, "").split(os.pathsep) if p.strip()]


def model_folders() -> list[Path]:
    """The allowed folders for model files, resolved: examples/models/ first, then $BATCHVAR_MODELS's in order."""
    return [EXAMPLES.resolve(), *env_folders(MODELS_ENV)]


def data_folders() -> list[Path]:
    """Where user data paths may point, resolved: the shipped data, then $BATCHVAR_DATA's folders in order."""
    return [p.resolve() for p in SHIPPED_DATA] + env_folders(DATA_ENV)


def _resolve(path: object, field: str) -> Path:
    """``path`` with ``~``, ``..`` and symlinks resolved; a relative path from the working directory, or from the
    project's root when it names nothing there (``examples/models/cnn_digits.py`` works from anywhere)."""
    if not isinstance(path, str) or not path.strip():
        raise ConfigError(field, "expected a path (a non-empty string)")
    if "\x00" in path:
        raise ConfigError(field, "a path cannot hold a NUL character")
    p = Path(path).expanduser()
    if not p.is_absolute() and not p.exists() and (ROOT / p).exists():
        p = ROOT / p
    try:
        return p.resolve()
    except (OSError, RuntimeError) as e:  # a symlink loop, an unreadable folder
        raise ConfigError(field, f"cannot resolve {path}: {e}") from None


def _inside(path: Path, folders: list[Path]) -> bool:
    return any(path == f or path.is_relative_to(f) for f in folders)


def _confined(path: object, field: str, folders: list[Path], variable: str) -> Path:
    resolved = _resolve(path, field)
    if not _inside(resolved, folders):
        shown = ", ".join(str(f) for f in folders)
        raise ConfigError(field, f"{path} is outside the allowed folders ({shown}); add its folder to ${variable} "
                                 "to allow it")
    return resolved


def model_file(path: str) -> Path:
    """The resolved path of the model file ``path``: a ``.py`` file inside an allowed folder (model_folders), else
    ConfigError("model.file", one line). Nothing is imported or read here."""
    resolved = _confined(path, MODEL_FIELD, model_folders(), MODELS_ENV)
    if resolved.suffix != ".py":
        raise ConfigError(MODEL_FIELD, f"{path} is not a Python file (.py)")
    if not resolved.is_file():
        raise ConfigError(MODEL_FIELD, f"{path} is not a file")
    return resolved


def _is_model_file(path: Path) -> bool:
    """A top-level ``def model(`` and ``def data(`` in the source (read as text, never imported)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    return all(d.search(text) for d in _DEFINES)


def model_files() -> list[Path]:
    """The model files the page offers: each allowed folder's ``*.py`` files (not recursive, none starting with
    ``_``, none whose symlink leads out of the folders) that define ``model`` and ``data`` at top level (a script
    beside them is not offered), resolved, without repeats, in folder then name order."""
    found: list[Path] = []
    for folder in model_folders():
        if not folder.is_dir():
            continue
        for p in sorted(folder.glob("*.py")):
            if p.name.startswith("_"):
                continue
            try:
                resolved = model_file(str(p))
            except ConfigError:  # a symlink out of the folders
                continue
            if resolved not in found and _is_model_file(resolved):
                found.append(resolved)
    return found


def data_path(path: str, field: str) -> Path:
    """The resolved ``path`` of a user data source (an IDX folder, a corpus file) when it lies inside the shipped
    data or a $BATCHVAR_DATA folder, else ConfigError(``field``, one line). Whether it exists is the loader's check."""
    return _confined(path, field, data_folders(), DATA_ENV)
