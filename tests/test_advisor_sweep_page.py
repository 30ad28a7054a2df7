"""The advisor page for a setting without exact theory (ui/advisor_sweep.py): before Run every (rule, b) cell is
validated and passed through the resource guard (backend.advisor.replica_plan); the b that fit run, the others are
named with the largest budget at which they would fit, and the Run box shows the time and memory estimate."""

from test_app import by_label, open_page, wait_for_run


def advisor_for(setting: str, batch_sizes: list[int], budget: int):
    """The advisor page in replica mode with these batch sizes and budget (no Run pressed)."""
    at = open_page("pages/advisor.py")
    by_label(at.sidebar.selectbox, "Setting").set_value(setting)
    at.run()
    by_label(at.sidebar.multiselect, "Batch sizes b").set_value(batch_sizes)
    at.run()
    by_label(at.sidebar.number_input, "Budget N (samples)").set_value(budget)
    at.run()
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    return at


def run_box(at) -> str:
    """The text of the Run box's estimate."""
    found = [m.value for m in at.markdown if m.value.startswith("**Sweep**")]
    assert len(found) == 1, [m.value for m in at.markdown]
    return found[0]


def test_a_b_past_the_step_limit_is_left_out_before_run_and_the_rest_runs():
    """Deep linear, b ∈ {1, 256}, N = 30 000: b = 1 would take 30 000 steps (the engine allows 20 000), so it is named
    before Run with the budget at which it fits; the estimate (time and memory) counts b = 256 alone, and Run runs
    b = 256 only, without an error box."""
    at = advisor_for("deep_linear", [1, 256], 30_000)
    notes = [c.value for c in at.caption if "left out" in c.value]
    assert len(notes) == 1 and notes[0].startswith("b = 1 left out") and "20000" in notes[0], notes
    assert "fits a budget of up to 20,000 samples" in notes[0]
    box = run_box(at)
    assert "1 rule(s) × 1 batch sizes" in box, box
    assert " s and " in box and "MiB" in box and ("CPU cores" in box or "NVIDIA" in box), box  # time, memory, where
    by_label(at.button, "Run").click()
    at.run()
    wait_for_run(at, "advs_deep_linear")
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    table = at.dataframe[0].value
    assert list(table["b"]) == [256] and list(table["steps"]) == [30_000 // 256]


def test_no_b_that_fits_means_no_run_and_one_warning():
    """Every b past the engine's limit: a warning says so and no Run button is offered (never a failed run)."""
    at = advisor_for("deep_linear", [1], 30_000)
    assert [w.value for w in at.warning] == ["No batch size fits at this budget: lower the budget or pick other "
                                             "batch sizes."]
    assert not any(b.label == "Run" for b in at.button)
    assert any(c.value.startswith("b = 1 left out") for c in at.caption)


def test_the_plan_guards_each_cell_on_the_executors_device(monkeypatch):
    """A sweep executor (Ray's) decides where each cell runs: replica_plan guards every cell on that device, not on
    this process's (a GPU worker's cost model and memory apply there)."""
    import torch

    from backend import advisor, api, core

    seen = []

    def guard(cell, device):
        seen.append(device)
        return {"seconds": 1.0}

    class Remote:
        def device(self, cell):
            return torch.device("meta")  # a device this process never picks: only the executor can name it

    monkeypatch.setattr(core, "guard", guard)
    config = api.parse_config({"setting": "deep_linear", "batch_sizes": [4, 16]})
    plan = advisor.replica_plan(config, 1024, ("none", "linear"), 4, Remote())
    assert plan == {"seconds": {4: 2.0, 16: 2.0}, "refused": {}}
    assert seen == [torch.device("meta")] * 4
    seen.clear()
    advisor.replica_plan(config, 1024, ("none",), 4)  # no executor: this process's device
    assert seen == [core.resolve_device(config.device)] * 2


def test_a_loaded_config_with_a_batch_schedule_runs_the_b_axis_with_a_note():
    """A config file with a batch_schedule loaded on the advisor page: the page's b axis replaces the schedule (the
    backend refuses a schedule: backend.advisor.SCHEDULE_REFUSED), so the page drops it, says so in one note, and
    plans the batch sizes picked — never the parse error of a schedule beside batch sizes."""
    at = open_page("pages/advisor.py")
    by_label(at.sidebar.selectbox, "Setting").set_value("deep_linear")
    at.run()
    at.session_state["advs_deep_linear_raw"] = {"setting": "deep_linear", "batch_schedule": [[2, 10], [8, 5]],
                                                "steps": 15, "replicas": 64}
    at.session_state["advs_deep_linear_gen"] = at.session_state["advs_deep_linear_gen"] + 1
    at.run()
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    notes = [c.value for c in at.caption if "batch_schedule" in c.value]
    assert len(notes) == 1 and "replaces" in notes[0], [c.value for c in at.caption]
    assert "1 rule(s) ×" in run_box(at)


def test_the_momentum_axis_runs_one_line_per_beta_and_equals_the_api(monkeypatch):
    """Deep linear in replica mode, momenta 0 and 0.5 with α/(1 − β) fixed: the Run box counts 2 momenta × the rule ×
    the b; Run draws one line per β whose losses equal advise_momentum's on the same config (the CLI's function, the
    runs then cached), names the best (b, β) and lists the best b of each β; the details follow the chosen β; the
    download carries the axis. An Adam-family optimizer (the sequence model's defaults) is one red line before Run."""
    import json

    from test_advisor_momentum_page import _first_layer_rows, _momentum_chart, _recording_downloads

    from backend import api

    downloads = _recording_downloads(monkeypatch)
    at = advisor_for("deep_linear", [4, 16], 1024)
    by_label(at.sidebar.text_input, "Momenta β (comma-separated)").set_value("0, 0.5")
    at.run()
    by_label(at.sidebar.checkbox, "Effective learning rate α/(1−β) fixed").check()
    at.run()
    assert "2 momenta × 1 rule(s) × 2 batch sizes" in run_box(at)
    by_label(at.button, "Run").click()
    at.run()
    wait_for_run(at, "advs_deep_linear")
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    config = api.parse_config({**api.defaults("deep_linear"), "batch_sizes": [4, 16]})
    ref = api.advise_momentum(config, 1024, ["0", "0.5"], ("none",), 4, None, True)
    chart = _momentum_chart(at)
    layer = json.loads(chart.proto.spec)["layer"][0]
    assert layer["encoding"]["color"]["scale"]["domain"] == ["0", "0.5"]
    drawn = _first_layer_rows(chart)
    for beta, line in drawn.groupby("β"):
        want = ref["answers"]["none"][beta]["curves"]
        assert list(line["loss"]) == [want[str(b)]["loss"] for b in line["b"]]
        assert list(line["loss_se"]) == [want[str(b)]["loss_se"] for b in line["b"]]
    assert set(drawn["β"]) == {"0", "0.5"}
    best = ref["best"]["none"]
    assert any(m.label == "best (b, β) (none)" and m.value == f"b = {best['b']}, β = {best['momentum']:g}"
               for m in at.metric)
    per_beta = at.dataframe[0].value
    assert list(per_beta["β"]) == [0.0, 0.5]
    assert list(per_beta["best b (none)"]) == [ref["best_b"]["none"][k] for k in ("0", "0.5")]
    by_label(at.selectbox, "β for the details below").set_value("0.5").run()
    assert not at.exception and not at.error
    assert any(m.label == "best b (none)" and m.value == str(ref["best_b"]["none"]["0.5"]) for m in at.metric)
    advice = json.loads(downloads["Advice (JSON)"])
    assert advice["momentum"] == [0, 0.5] and advice["effective_lr"] is True
    at = advisor_for("sequence", [16], 64)
    by_label(at.sidebar.text_input, "Momenta β (comma-separated)").set_value("0, 0.5")
    at.run()
    assert [e.value for e in at.error] == ["Check the inputs — momentum: the momentum axis is the SGD family's; the "
                                           "config's optimizer is 'adamw'"]
    assert not any(b.label == "Run" for b in at.button)
