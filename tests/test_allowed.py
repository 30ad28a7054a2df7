"""Where code and data may come from (backend/allowed.py): model files only from examples/models/ and
$BATCHVAR_MODELS, user data paths only from the shipped data and $BATCHVAR_DATA, judged after `..` and symlinks are
resolved, refused in one line naming the field before anything is imported or read."""

from __future__ import annotations

import gzip
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from backend import allowed
from backend.config import parse_config
from backend.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
# a model file whose import leaves a mark: refusing it must never import it
MARKING = "import pathlib\npathlib.Path({mark!r}).write_text('imported')\ndef model(seed):\n    pass\ndef data():\n    pass\n"


def _model(path: Path, mark: Path | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(MARKING.format(mark=str(mark or path.with_suffix(".imported"))))
    return path


def _refused(fn, *args, field: str) -> str:
    with pytest.raises(ConfigError) as err:
        fn(*args)
    assert err.value.field == field
    line = str(err.value)
    assert "\n" not in line and line.startswith(f"{field}: ")
    return line


@pytest.fixture
def folders(tmp_path, monkeypatch):
    """An allowed models folder (in $BATCHVAR_MODELS), a folder beside it that is not allowed, no $BATCHVAR_DATA."""
    ok, other = tmp_path / "allowed", tmp_path / "other"
    ok.mkdir()
    other.mkdir()
    monkeypatch.setenv(allowed.MODELS_ENV, str(ok))
    monkeypatch.delenv(allowed.DATA_ENV, raising=False)
    return ok, other


def test_a_model_file_outside_the_folders_is_refused_before_it_is_imported(folders):
    ok, other = folders
    mark = other / "mark"
    outside = _model(other / "evil.py", mark)
    line = _refused(allowed.model_file, str(outside), field="model.file")
    assert "outside the allowed folders" in line and str(ok) in line
    assert not mark.exists()  # nothing imported
    inside = _model(ok / "fine.py", mark)
    assert allowed.model_file(str(inside)) == inside.resolve()
    assert not mark.exists()  # model_file only says where; it imports nothing


def test_dotdot_and_a_symlink_out_are_refused_a_symlink_inside_is_allowed(folders):
    ok, other = folders
    target_out = _model(other / "m.py")
    _refused(allowed.model_file, str(ok / ".." / "other" / "m.py"), field="model.file")
    (ok / "out.py").symlink_to(target_out)
    _refused(allowed.model_file, str(ok / "out.py"), field="model.file")
    (ok / "dirlink").symlink_to(other, target_is_directory=True)
    _refused(allowed.model_file, str(ok / "dirlink" / "m.py"), field="model.file")
    target_in = _model(ok / "sub" / "real.py")
    (ok / "in.py").symlink_to(target_in)
    assert allowed.model_file(str(ok / "in.py")) == target_in.resolve()
    assert allowed.model_file(str(ok / "sub" / ".." / "in.py")) == target_in.resolve()
    (other / "into.py").symlink_to(target_in)  # a link from outside to a file inside: the code run is inside
    assert allowed.model_file(str(other / "into.py")) == target_in.resolve()


def test_every_folder_of_the_variable_is_allowed_and_only_while_it_is_set(tmp_path, monkeypatch):
    a, b = _model(tmp_path / "a" / "m.py"), _model(tmp_path / "b" / "m.py")
    monkeypatch.setenv(allowed.MODELS_ENV, os.pathsep.join([str(tmp_path / "a"), "", str(tmp_path / "b")]))
    assert allowed.model_file(str(a)) == a.resolve() and allowed.model_file(str(b)) == b.resolve()
    monkeypatch.setenv(allowed.MODELS_ENV, str(tmp_path / "a"))
    _refused(allowed.model_file, str(b), field="model.file")
    monkeypatch.delenv(allowed.MODELS_ENV)
    _refused(allowed.model_file, str(a), field="model.file")


def test_the_shipped_examples_are_allowed_from_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.delenv(allowed.MODELS_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    shipped = ROOT / "examples" / "models" / "cnn_digits.py"
    assert allowed.model_file("examples/models/cnn_digits.py") == shipped.resolve()
    assert allowed.model_file(str(shipped)) == shipped.resolve()
    _refused(allowed.model_file, "examples/models/../../backend/api.py", field="model.file")


def test_not_a_python_file_or_missing_or_not_a_string_is_one_line(folders):
    ok, _ = folders
    (ok / "notes.txt").write_text("x")
    assert "not a Python file" in _refused(allowed.model_file, str(ok / "notes.txt"), field="model.file")
    assert "not a file" in _refused(allowed.model_file, str(ok / "gone.py"), field="model.file")
    for bad in ("", "   ", 3, None, "a\x00b.py"):
        _refused(allowed.model_file, bad, field="model.file")
    line = _refused(allowed.model_file, "/nowhere\n/evil.py", field="model.file")
    assert "\\n" in line  # the user's line break echoed as its escape: still one line


def test_the_page_offers_the_model_files_of_the_folders_and_nothing_else(folders):
    ok, other = folders
    mine = _model(ok / "mine.py")
    (ok / "helper.py").write_text("def model(seed):\n    pass\n")  # no data(): not a model file
    _model(ok / "_private.py")
    (ok / "out.py").symlink_to(_model(other / "m.py"))  # leads out: not offered
    offered = allowed.model_files()
    shipped = sorted((ROOT / "examples" / "models").glob("*.py"))
    assert mine.resolve() in offered
    names = {p.name for p in offered}
    assert not names & {"helper.py", "_private.py", "out.py", "m.py"}
    assert {"mlp_digits.py", "cnn_digits.py", "char_transformer.py", "cnn_digits_checkpoint.py"} <= names
    assert "train_checkpoint.py" not in names  # a script, not a model file
    assert all(p.resolve() in offered for p in shipped if p.name != "train_checkpoint.py")
    assert all(allowed.model_file(str(p)) == p for p in offered)


# -- data paths of the existing settings, through parse_config ------------------------------------------------

def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(">" + "I" * array.ndim, *array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def _idx_folder(folder: Path) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    _write_idx(folder / "train-images-idx3-ubyte.gz", rng.integers(0, 256, size=(30, 4, 4)))
    _write_idx(folder / "train-labels-idx1-ubyte.gz", np.arange(30) % 3)
    return folder


def _corpus(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"sentence number {i} is {'good' if i % 2 else 'bad'}\t{i % 2}\n" for i in range(20)))
    return path


def _mlp(path: str) -> dict:
    return {"setting": "mlp", "dataset": {"name": "idx", "path": path}, "batch_sizes": [2]}


def _sequence(path: str) -> dict:
    return {"setting": "sequence", "corpus": {"name": "file", "path": path}, "batch_sizes": [2]}


def test_data_paths_outside_the_data_folders_are_refused_naming_the_field(tmp_path, monkeypatch):
    monkeypatch.delenv(allowed.DATA_ENV, raising=False)
    idx = _idx_folder(tmp_path / "outside" / "idx")
    corpus = _corpus(tmp_path / "outside" / "c.tsv")
    for raw, field in ((_mlp(str(idx)), "dataset.path"), (_sequence(str(corpus)), "corpus.path"),
                       (_mlp("/etc"), "dataset.path"), (_sequence("/etc/passwd"), "corpus.path"),
                       (_sequence(str(allowed.SHIPPED_DATA[0] / ".." / "api.py")), "corpus.path")):
        line = _refused(parse_config, raw, field=field)
        assert "outside the allowed folders" in line and allowed.DATA_ENV in line


def test_data_paths_inside_the_data_folders_are_read(tmp_path, monkeypatch):
    data = tmp_path / "data"
    idx, corpus = _idx_folder(data / "idx"), _corpus(data / "c.tsv")
    monkeypatch.setenv(allowed.DATA_ENV, os.pathsep.join([str(tmp_path / "elsewhere"), str(data)]))
    mlp = parse_config(_mlp(str(idx)))
    assert mlp.dataset["path"] == str(idx) and mlp.n_train == 24  # the 80 % split of the 30 images
    seq = parse_config(_sequence(str(corpus)))
    assert seq.corpus["path"] == str(corpus) and seq.n_train == 16
    shipped = allowed.SHIPPED_DATA[0] / "sentiment" / "yelp_labelled.txt"  # the shipped data: no variable needed
    monkeypatch.delenv(allowed.DATA_ENV)
    assert parse_config(_sequence(str(shipped))).n_train > 100


def test_a_csv_corpus_is_confined_as_a_tsv_one(tmp_path, monkeypatch):
    """The sequence model's CSV corpus (format "csv"): outside the data folders refused naming corpus.path, inside
    read (its 20 rows: the 80 % training split)."""
    def csv_corpus(path: Path) -> dict:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f'"sentence, number {i}",{i % 2}\n' for i in range(20)))
        return {"setting": "sequence", "corpus": {"name": "file", "path": str(path), "format": "csv"},
                "batch_sizes": [2]}

    monkeypatch.delenv(allowed.DATA_ENV, raising=False)
    line = _refused(parse_config, csv_corpus(tmp_path / "outside" / "c.csv"), field="corpus.path")
    assert "outside the allowed folders" in line
    monkeypatch.setenv(allowed.DATA_ENV, str(tmp_path / "data"))
    assert parse_config(csv_corpus(tmp_path / "data" / "c.csv")).n_train == 16


def test_a_data_symlink_out_is_refused_also_where_the_loader_reads(tmp_path, monkeypatch):
    from backend.images import load_dataset
    from backend.text import load_corpus

    data = tmp_path / "data"
    data.mkdir()
    outside_idx, outside_corpus = _idx_folder(tmp_path / "out" / "idx"), _corpus(tmp_path / "out" / "c.tsv")
    (data / "idx").symlink_to(outside_idx, target_is_directory=True)
    (data / "c.tsv").symlink_to(outside_corpus)
    inside = _corpus(data / "real.tsv")
    (data / "link.tsv").symlink_to(inside)
    monkeypatch.setenv(allowed.DATA_ENV, str(data))
    _refused(parse_config, _mlp(str(data / "idx")), field="dataset.path")
    _refused(parse_config, _sequence(str(data / "c.tsv")), field="corpus.path")
    assert parse_config(_sequence(str(data / "link.tsv"))).n_train == 16
    # a config that passed the parse, its link then turned outward: the loader checks again
    _refused(load_dataset, {"name": "idx", "path": str(data / "idx")}, field="dataset.path")
    _refused(load_corpus, {"name": "file", "path": str(data / "c.tsv")}, field="corpus.path")


def test_the_cli_exits_2_with_the_field_for_a_data_path_outside(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps(_mlp("/etc")))
    env = {k: v for k, v in os.environ.items() if k != allowed.DATA_ENV}
    out = subprocess.run([sys.executable, "-m", "backend", "simulate", str(cfg)], cwd=ROOT, capture_output=True,
                         text=True, env=env, timeout=300)
    assert out.returncode == 2 and out.stderr.startswith("error: dataset.path: /etc is outside the allowed folders")
    assert len(out.stderr.strip().splitlines()) == 1


# -- the app binds the loopback by default --------------------------------------------------------------------

def _socket_inodes(pid: int) -> set[int]:
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            out.add(int(link[8:-1]))
    return out


def test_the_app_listens_on_the_loopback_only_by_default(tmp_path):
    """`streamlit run app.py` with no address option (.streamlit/config.toml's): every listening socket of the
    server is 127.0.0.1's; `make run` passes 127.0.0.1 unless ADDRESS is given."""
    import socket
    import time
    import urllib.request

    from test_sweep_ray import _listening_sockets

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "BATCHVAR_CACHE_DIR": str(tmp_path / "cache")}
    with open(tmp_path / "streamlit.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
                                 "--server.port", str(port), "--browser.gatherUsageStats", "false"], cwd=ROOT,
                                env=env, stdout=log, stderr=log)
        try:
            deadline = time.time() + 90
            while True:
                try:
                    if urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).read() == b"ok":
                        break
                except OSError:
                    assert time.time() < deadline, (tmp_path / "streamlit.log").read_text()
                    time.sleep(0.5)
            listening = _listening_sockets()
            mine = {listening[i] for i in _socket_inodes(proc.pid) if i in listening}
            assert mine == {"127.0.0.1"}
        finally:
            proc.terminate()
            proc.wait(30)
    make = subprocess.run(["make", "-n", "run"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert "streamlit run app.py --server.address 127.0.0.1" in make.stdout
    opened = subprocess.run(["make", "-n", "run", "ADDRESS=0.0.0.0"], cwd=ROOT, capture_output=True, text=True,
                            timeout=60)
    assert "--server.address 0.0.0.0" in opened.stdout
