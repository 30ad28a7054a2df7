"""Sequence model with Adam: vmap replicas vs modules, per-replica clipping, one Adam over the stack vs R Adams,
tokenizer and loaders, the laptop preset via the CLI, bad fields."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT

from backend.settings import sequence as api_sequence
from backend.config import parse_config
from backend.engine import mlp as trainer
from backend.engine import sequence as seq
from backend.errors import ConfigError
from backend import optim
from backend.text import Tokenizer, load_corpus, parse_lines

DEV = torch.device("cpu")


def setup(R=3, dtype=torch.float64):
    model = seq.Encoder(30, 10, 8, 2, 2).to(dtype)
    params = {k: v.repeat_interleave(R, dim=0) for k, v in seq.init_params(model, 1, 0, dtype, DEV).items()}
    # make the replicas differ
    gen = torch.Generator().manual_seed(1)
    params = {k: v + 0.05 * torch.randn(v.shape, generator=gen, dtype=dtype) for k, v in params.items()}
    ids = torch.randint(2, 30, (R, 5, 10), generator=gen)
    ids[:, :, 7:] = 0  # padding
    y = torch.randint(0, 2, (R, 5), generator=gen)
    return model, params, ids, y


def module_copy(params, r, dtype=torch.float64):
    m = seq.Encoder(30, 10, 8, 2, 2).to(dtype)
    with torch.no_grad():
        for name, p in m.named_parameters():
            p.copy_(params[name][r])
    return m


def test_vmap_replicas_match_separate_modules():
    model, params, ids, y = setup()
    rep = trainer.Replicas(trainer.module_forward(seq.Encoder(30, 10, 8, 2, 2).double()))
    g, loss = rep.grad_and_loss(params, ids, y)
    for r in range(3):
        m = module_copy(params, r)
        out = torch.nn.functional.cross_entropy(m(ids[r]), y[r])
        out.backward()
        assert loss[r].item() == pytest.approx(out.item(), rel=1e-12)
        for name, p in m.named_parameters():
            torch.testing.assert_close(g[name][r], p.grad, rtol=1e-9, atol=1e-12)


def test_per_replica_clipping_matches_each_module_alone():
    model, params, ids, y = setup()
    rep = trainer.Replicas(trainer.module_forward(seq.Encoder(30, 10, 8, 2, 2).double()))
    g, _ = rep.grad_and_loss(params, ids, y)
    g = {k: v * torch.tensor([1.0, 50.0, 0.01], dtype=v.dtype).reshape(-1, *([1] * (v.dim() - 1)))
         for k, v in g.items()}  # one replica far above the threshold, one far below
    clipped = optim.clip_by_replica_norm(0.5).update(g, {}, params, 0)
    for r in range(3):
        m = module_copy(params, r)
        for name, p in m.named_parameters():
            p.grad = g[name][r].clone()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 0.5)
        for name, p in m.named_parameters():
            torch.testing.assert_close(clipped[name][r], p.grad, rtol=1e-9, atol=1e-14)


def test_one_adam_over_the_stack_equals_R_adams():
    model, params, ids, y = setup()
    rep = trainer.Replicas(trainer.module_forward(seq.Encoder(30, 10, 8, 2, 2).double()))
    opt = optim.adamw(betas=(0.9, 0.99), eps=1e-8, weight_decay=0.01)
    state = opt.init(params)
    modules = [module_copy(params, r) for r in range(3)]
    torch_opts = [torch.optim.AdamW(m.parameters(), lr=1e-3, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.01)
                  for m in modules]
    for t in range(4):
        lr = seq.lr_at(t, 1e-2, 2, 4)
        g, _ = rep.grad_and_loss(params, ids, y)
        params = opt.step(params, g, state, lr, t)
        for r, (m, o) in enumerate(zip(modules, torch_opts)):
            o.zero_grad()
            torch.nn.functional.cross_entropy(m(ids[r]), y[r]).backward()
            for group in o.param_groups:
                group["lr"] = lr
            o.step()
    # float64 rounding only: the two implementations order the operations differently, and where ε dominates
    # √v̂ the update amplifies relative rounding; a wrong bias correction or decay would differ at O(lr)
    for r, m in enumerate(modules):
        for name, p in m.named_parameters():
            torch.testing.assert_close(params[name][r], p.detach(), rtol=1e-7, atol=1e-10)


def test_warmup_then_linear_decay():
    assert [round(seq.lr_at(t, 1.0, 4, 10), 4) for t in (0, 3, 4, 7, 10)] == [0.25, 1.0, 1.0, 0.5, 0.0]


def test_the_config_reaches_the_optimizer():
    """The sequence config's Adam fields build backend/optim.py's AdamW: clipping first, then the decoupled step."""
    cfg = parse_config({"setting": "sequence", "optimizer": {"beta1": "0.8", "beta2": "0.95", "eps": "1e-7",
                                                             "weight_decay": "0.02", "clip": "0.7"}})
    opt = api_sequence.build_task(cfg, DEV)[0].optimizer
    assert opt == optim.Optimizer((optim.ClipByReplicaNorm(0.7),), optim.AdamStep(0.8, 0.95, 1e-7, 0.02))


def test_loader_and_tokenizer_on_small_files(tmp_path):
    tsv = 'He said "great" food!\t1\nIt\'s "bad", really.\t0\nOK\t1\nmeh\t0\n'
    s, y = parse_lines(tsv, "x.tsv")
    assert s[0] == 'He said "great" food!' and y == [1, 0, 1, 0]
    csv_text = 'text,label\n"Great, really ""good""",1\nbad,0\nfine,1\nawful,0\n'
    s, y = parse_lines(csv_text, "x.csv", "csv")
    assert s[0] == 'Great, really "good"' and y == [1, 0, 1, 0]
    with pytest.raises(ConfigError, match="line 2: no tab"):
        parse_lines("good\t1\nno tab here\n", "bad.tsv")
    with pytest.raises(ConfigError, match="label must be 0 or 1"):
        parse_lines("good\t1\nbad\t7\n", "bad.tsv")
    with pytest.raises(ConfigError, match="expected 2 columns"):
        parse_lines("a,1\nb,0,extra\n", "bad.csv", "csv")
    tok = Tokenizer.build(["the cat", "the dog", "a cat!"], "word", 4, 10)
    assert tok.vocab["cat"] == 2 and tok.vocab["the"] == 3 and tok.vocab["dog"] == 6  # by count, ties a→z
    ids = tok.encode(["the cat sat on the mat", "", "dog"])
    assert ids.shape == (3, 4) and ids[0, 2] == 1 and ids[1, 0] == 1 and ids[2, 1] == 0
    assert Tokenizer.build(["ab"], "char", 3, 10).encode(["abc"]).tolist() == [[2, 3, 1]]
    path = tmp_path / "mine.tsv"
    path.write_text(tsv * 3)
    data = load_corpus({"name": "file", "path": str(path)})
    assert len(data.train_text) + len(data.val_text) == 12


def test_vendored_corpora():
    d = load_corpus({"name": "yelp"})
    assert len(d.train_text) == 800 and len(d.val_text) == 200 and set(d.y_train) == {0, 1}
    assert len(load_corpus({"name": "all"}).train_text) == 2400
    assert any('"' in s for s in load_corpus({"name": "imdb"}).train_text)  # quotes survive (no CSV quoting)


def test_laptop_preset_via_cli_orders_variance_by_b(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"setting": "sequence", "preset": "laptop"}))
    out = subprocess.run([sys.executable, "-m", "backend", "simulate", str(path)], cwd=ROOT, capture_output=True,
                         text=True, env=os.environ.copy(), timeout=900)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert "gap_distorted" not in res["curves"]["16"] and "b_simple" in res["curves"]["16"]
    assert {"var_g_se", "noise_one_step_se", "b_simple_se", "loss_val_se"} <= set(res["curves"]["16"])
    v16, v64 = np.array(res["curves"]["16"]["var_g"][1:]), np.array(res["curves"]["64"]["var_g"][1:])
    assert np.mean(v16 > v64) >= 0.6
    assert res["curves"]["16"]["loss_train"][-1] < res["curves"]["16"]["loss_train"][0]


@pytest.mark.parametrize("raw,field", [({"width": 30, "heads": 4}, "width"), ({"corpus": "tweets"}, "corpus.name"),
                                       ({"optimizer": {"beta1": "1.5"}}, "optimizer.beta1"),
                                       ({"optimizer": {"lr": "-1"}}, "optimizer.lr"),
                                       ({"tokenizer": "bpe"}, "tokenizer"), ({"batch_sizes": [900]}, "batch_sizes")])
def test_bad_fields_are_refused(tmp_path, raw, field):
    with pytest.raises(ConfigError) as err:
        parse_config({"setting": "sequence", **raw})
    assert err.value.field == field
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"setting": "sequence", **raw}))
    out = subprocess.run([sys.executable, "-m", "backend", "simulate", str(path)], cwd=ROOT, capture_output=True,
                         text=True, env=os.environ.copy())
    assert out.returncode == 2 and out.stderr.startswith(f"error: {field}")


def test_trailing_padding_columns_change_nothing():
    """Dropping columns that are padding in every sentence (what encode_corpus does) leaves logits and gradients
    unchanged: padding is never attended to nor pooled."""
    torch.manual_seed(0)
    model = seq.Encoder(30, 16, 8, 2, 2).double()
    ids = torch.randint(2, 30, (5, 16))
    lengths = torch.tensor([3, 7, 1, 9, 4])
    ids[torch.arange(16)[None, :] >= lengths[:, None]] = 0
    y = torch.tensor([0, 1, 1, 0, 1])
    grads = []
    for width in (16, 9):
        model.zero_grad()
        out = model(ids[:, :width])
        torch.nn.functional.cross_entropy(out, y).backward()
        grads.append((out.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=1e-12, atol=1e-14)
    for g_trim, g_full in zip(grads[1][1], grads[0][1]):
        torch.testing.assert_close(g_trim, g_full, rtol=1e-10, atol=1e-14)
    cfg = parse_config({"setting": "sequence", "preset": "paper"})
    tok, tr, va, _ = api_sequence.encode_corpus(cfg)
    assert tr.shape[1] == va.shape[1] < cfg.max_len and (tr[:, -1] != 0).any() | (va[:, -1] != 0).any()


def test_a_sweep_over_momentum_on_the_adamw_fields_is_refused_in_one_line_naming_the_field():
    """The old form's fields are AdamW's: optimizer.momentum beside them (a sweep cell over the default config) is
    refused in one line naming optimizer.momentum and saying to set optimizer.name — never silently dropped."""
    from backend.sweep import parse_sweep

    with pytest.raises(ConfigError) as err:
        parse_sweep({"base": {"setting": "sequence"}, "grid": {"optimizer.momentum": [0.9]}})
    assert err.value.field.endswith("optimizer.momentum") and "\n" not in str(err.value)
    assert "sgd" in err.value.message and "optimizer.name" in err.value.message


def test_a_named_optimizer_beside_the_adamw_fields_takes_the_rest_from_them():
    """optimizer.name on an old-form config (a sweep cell over optimizer.name): adam/adamw read beta1/beta2/eps/
    weight_decay as theirs and lr, warmup, clip stay; the Adam-only beta1/beta2/eps beside sgd are refused in one line
    naming the field (nothing dropped silently) — a momentum sweep starts from the named form, and its cells take lr,
    warmup and clip from the base and the rest of the optimizer from the defaults."""
    from backend.sweep import parse_sweep

    base = {"setting": "sequence", "optimizer": {"lr": "0.002", "warmup": 3, "clip": "0.5"}}
    with pytest.raises(ConfigError) as err:
        parse_sweep({"base": base, "grid": {"optimizer.name": ["sgd"], "optimizer.momentum": [0.9]}})
    assert err.value.field.endswith("optimizer.beta1") and "named form" not in err.value.message
    assert '"name": "sgd"' in err.value.message and "\n" not in str(err.value)
    named = {"setting": "sequence", "optimizer": {"name": "sgd", "lr": "0.002", "warmup": 3, "clip": "0.5"}}
    sweep = parse_sweep({"base": named, "grid": {"optimizer.momentum": [0.5, 0.9]}})
    for cell, beta in zip(sweep.cells, (0.5, 0.9)):
        opt = cell.config.optimizer
        assert cell.config.optimizer_spec == optim.OptimizerSpec("sgd", momentum=beta)
        assert (opt["lr"], opt["warmup"], opt["clip"]) == (0.002, 3, 0.5)
    adam = parse_config({**base, "optimizer": {**parse_config(base).optimizer, "name": "adam", "beta1": 0.8}})
    assert adam.optimizer_spec == optim.OptimizerSpec("adam", betas=(0.8, 0.999), eps=1e-8, weight_decay=0.0)
    assert adam.optimizer["lr"] == 0.002
    old = parse_config({"setting": "sequence", "optimizer": {"beta1": "0.8", "weight_decay": "0.01"}})
    assert parse_config({"setting": "sequence", "optimizer": {**old.optimizer, "name": "adamw"}}) == old
    with pytest.raises(ConfigError, match=r"^optimizer\.beta1: .*sgd"):
        parse_config({"setting": "sequence", "optimizer": {**old.optimizer, "name": "sgd"}})
