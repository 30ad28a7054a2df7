"""Every page under streamlit.testing.v1.AppTest: renders with defaults, a small Run completes, no exception."""

import re
import time

from conftest import ROOT
from streamlit.testing.v1 import AppTest

APP = str(ROOT / "app.py")


def open_page(page: str | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    if page:
        at.switch_page(page)
        at.run()
    assert not at.exception, at.exception
    return at


def shown(element) -> str:
    """The text a Markdown element shows: its source without the backslash escapes."""
    return re.sub(r"\\(.)", r"\1", element.value)


def by_label(elements, label):
    found = [e for e in elements if e.label == label]
    assert found, f"no widget labelled {label!r}"
    return found[0]


def wait_for_run(at: AppTest, prefix: str = "lr", timeout: float = 180) -> None:
    """Rerun the script until the page's background job (session key ``<prefix>_job``) has finished."""
    end = time.time() + timeout
    while at.session_state[f"{prefix}_job"] is not None and time.time() < end:
        time.sleep(0.3)
        at.run()
    assert at.session_state[f"{prefix}_job"] is None, "the run did not finish"


def test_home_renders_and_links_every_page():
    """Home links every page of the app's navigation (and every page script is in the navigation), each link
    labelled with the page's title and its card."""
    from ui.shell import HOME, nav_pages

    at = open_page()
    assert "batchvar" in at.title[0].value
    assert any("Theorems 1–2" in m.value for m in at.markdown)
    links = at.main.get("page_link")
    others = [p for p in nav_pages() if p != HOME]
    assert sorted(link.proto.page for link in links) == sorted(p.url_path for p in others)
    assert {p.path for p in nav_pages()} == {f"pages/{f.name}" for f in (ROOT / "pages").glob("*.py")}
    assert {link.proto.page: link.proto.label for link in links} == {p.url_path: p.title for p in others}
    captions = [c.value for c in at.main.caption]
    assert all(p.card in captions for p in others), captions  # each page's card beneath its link


def test_linear_regression_defaults_then_small_run():
    at = open_page("pages/linear_regression.py")
    assert not at.error
    by_label(at.sidebar.slider, "Iterations T").set_value(20)
    by_label(at.sidebar.number_input, "Replicas").set_value(200)
    by_label(at.sidebar.multiselect, "Batch sizes b").set_value([4, 64])
    at.run()
    by_label(at.button, "Run").click()
    at.run()
    wait_for_run(at)
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    captions = " ".join(c.value for c in at.caption)
    assert "200 replicas per b" in captions
    metrics = {m.label: m.value for m in at.metric}
    assert float(metrics["|z| ≤ 4"].rstrip(" %")) >= 90.0  # estimates agree with the exact theory
    assert len(at.success) == 3  # Theorems 1–2 hold on the exact values
    fit_caption = next(c.value for c in at.caption if c.value.startswith("The paper fits"))  # Against b: 2 b < 7
    assert "fit to exact values, so no sampling error" in fit_caption and "±" not in fit_caption
    assert at.latex and "frac{1}{b}" in at.latex[0].value
    assert dict(at.query_params)["steps"] == ["20"] or dict(at.query_params)["steps"] == "20"


def test_bad_input_shows_a_message_not_a_traceback():
    at = open_page("pages/linear_regression.py")
    by_label(at.sidebar.text_input, "c (e.g. 1/2 or 0.05)").set_value("-3")
    at.run()
    assert not at.exception
    assert any("lr.c" in e.value for e in at.error)
    by_label(at.sidebar.text_input, "c (e.g. 1/2 or 0.05)").set_value("1/2")
    by_label(at.sidebar.multiselect, "Batch sizes b").set_value([])
    at.run()
    assert not at.exception and any("batch_sizes" in shown(e) for e in at.error)


def test_echoed_input_is_escaped_not_rendered():
    """A value the user typed comes back in the error box as text: no link, no image, one line."""
    at = open_page("pages/linear_regression.py")
    by_label(at.sidebar.text_input, "c (e.g. 1/2 or 0.05)").set_value("![x](http://127.0.0.1:9/a.png) **b**")
    at.run()
    assert not at.exception
    msg = next(e.value for e in at.error if "lr.c" in e.value)
    assert r"!\[x\]\(http" in msg and r"\*\*b\*\*" in msg and "\n" not in msg


def test_theory_page_opens_the_section_a_link_names():
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["section"] = "3"
    at.run()
    at.switch_page("pages/theory.py")
    at.run()
    assert not at.exception
    assert any(h.value.startswith("§3 ") for h in at.header)
    assert any("population" in m.value and "n/(n-1)" in m.value for m in at.markdown)


def test_url_query_parameters_reproduce_a_view():
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["steps"] = "33"
    at.query_params["batch_sizes"] = "[8,40]"
    at.query_params["sampler"] = "with_replacement"
    at.run()
    at.switch_page("pages/linear_regression.py")
    at.run()
    assert not at.exception
    assert by_label(at.sidebar.slider, "Iterations T").value == 33
    assert by_label(at.sidebar.multiselect, "Batch sizes b").value == [8, 40]
    assert by_label(at.sidebar.selectbox, "Sampler").value == "with_replacement"


def open_link(page: str, params: dict[str, str]) -> AppTest:
    """A fresh session that opens ``page`` by a link carrying ``params``."""
    at = AppTest.from_file(APP, default_timeout=120)
    for key, value in params.items():
        at.query_params[key] = value
    at.run()
    at.switch_page(page)
    at.run()
    assert not at.exception, at.exception
    return at


def test_a_link_beyond_a_limit_is_named_never_clamped_silently():
    """A link's value beyond the config's limit is refused (a one-line warning naming the field and the limit, the
    rest of the link kept); one the config takes but a widget cannot show starts the widget at its limit with a
    warning naming both; a value of the wrong type is refused the same way, never a traceback."""
    from backend import api

    at = open_link("pages/linear_regression.py", {"steps": "999999", "replicas": "300"})
    notes = [w.value for w in at.warning]
    assert [n for n in notes if "steps" in n and re.search(r"20,?000", n) and "999999" in n], notes
    assert by_label(at.sidebar.slider, "Iterations T").value == api.defaults("linear_regression")["steps"]
    assert by_label(at.sidebar.number_input, "Replicas").value == 300  # the rest of the link is kept
    by_label(at.sidebar.number_input, "Replicas").set_value(400)
    at.run()
    assert any("steps" in w.value and "999999" in w.value for w in at.warning)  # still said after a rerun

    at = open_link("pages/linear_regression.py", {"steps": "8000"})
    notes = [w.value for w in at.warning]
    assert [n for n in notes if "steps = 8,000" in n and "5,000" in n], notes
    assert by_label(at.sidebar.slider, "Iterations T").value == 5000

    at = open_link("pages/mlp.py", {"setting": "mlp", "epochs": "5000"})
    assert [w.value for w in at.warning if "epochs = 5,000" in w.value and "1,000" in w.value]
    assert by_label(at.sidebar.slider, "Epochs").value == 1000

    at = open_link("pages/linear_regression.py", {"steps": "1.5", "lr": '{"schedule": "nope", "c": "1/2"}'})
    notes = " ".join(w.value for w in at.warning)
    assert "steps" in notes and "lr.schedule" in notes and not at.error, notes


def test_the_run_panel_says_one_thing_per_state():
    """Idle, running, cancelled, failed: exactly one message each under the Run form (a cancelled or failed run is
    said until the inputs change); driven by jobs of the page's own key, so every state is reached for certain."""
    import threading

    from backend import api, jobs
    from backend.errors import Cancelled

    at = open_link("pages/mlp.py", {"setting": "mlp", "epochs": "1", "inits": "1", "replicas": "2"})

    def messages() -> list[tuple[str, str]]:
        return ([("info", m.value) for m in at.info] + [("warning", m.value) for m in at.warning]
                + [("error", m.value) for m in at.error])

    def finished(job) -> None:
        job.thread.join(timeout=30)
        assert not job.running
        at.run()
        assert not at.exception, at.exception

    idle = messages()
    assert len(idle) == 1 and idle[0][0] == "info" and "Press Run" in idle[0][1], idle
    key = api.simulation_key(api.parse_config(at.session_state["last_config_mlp"]))

    def wait_for_cancel(progress, cancel: threading.Event):
        cancel.wait(60)
        raise Cancelled()

    at.session_state["mlp_job"] = job = jobs.start(key, wait_for_cancel, api.Progress(total=1))
    at.run()
    assert messages() == [] and at.get("progress"), messages()  # running: the progress bar alone
    job.cancel.set()
    finished(job)
    said = messages()
    assert len(said) == 1 and said[0][0] == "warning" and "cancelled" in said[0][1], said
    at.run()
    assert messages() == said  # still said on the next rerun

    def fail(progress, cancel):
        raise RuntimeError("disk full")

    at.session_state["mlp_job"] = job = jobs.start(key, fail, api.Progress(total=1))
    finished(job)
    said = messages()
    assert len(said) == 1 and said[0][0] == "error" and "disk full" in said[0][1], said
    by_label(at.sidebar.slider, "Epochs").set_value(2)  # other inputs: a run not yet made
    at.run()
    assert messages() == idle


def test_mlp_paper_preset_shows_its_estimate_beside_the_install_hint(monkeypatch, tmp_path):
    """Fashion-MNIST absent: the paper preset's time and memory are still estimated (its sizes are published), the
    install hint is the one message, and Run is disabled."""
    from backend import images

    monkeypatch.setattr(images, "FASHION_DIR", tmp_path / "absent")
    at = open_page("pages/mlp.py")
    by_label(at.sidebar.selectbox, "Preset").set_value("paper")
    at.run()
    by_label(at.sidebar.button, "Apply preset").click()
    at.run()
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    header = next(m.value for m in at.markdown if m.value.startswith("**Replica run**"))
    assert "n = 60000 training images" in header and re.search(r"about [\d.]+ h and [\d.]+ GiB", header), header
    said = [w.value for w in at.warning] + [i.value for i in at.info]
    assert len(said) == 1 and "not installed" in said[0] and "apt-get install dataset-fashion-mnist" in said[0], said
    assert by_label(at.button, "Run").disabled


def test_the_applied_preset_stays_selected():
    from backend import api

    at = open_page("pages/linear_regression.py")
    by_label(at.sidebar.selectbox, "Preset").set_value("paper (Figure 2b)")
    at.run()
    by_label(at.sidebar.button, "Apply preset").click()
    at.run()
    assert not at.exception, at.exception
    assert by_label(at.sidebar.selectbox, "Preset").value == "paper (Figure 2b)"
    preset = api.expand_preset({"setting": "linear_regression", "preset": "paper (Figure 2b)"})
    assert by_label(at.sidebar.slider, "Iterations T").value == preset["steps"]
    assert by_label(at.sidebar.multiselect, "Batch sizes b").value == preset["batch_sizes"]


def test_charts_draw_theory_and_estimate_and_skip_rounding_zeros():
    import numpy as np

    from backend import api, charts
    from backend.config import parse_config

    cfg = parse_config({"steps": 5, "batch_sizes": [4, 16], "replicas": 50})
    th, sim = api.theory(cfg), api.simulate(cfg)
    df = charts.curves_frame(th["t"], cfg.batch_sizes, th["curves"], sim["curves"], "var_full_grad")
    assert set(df["source"]) == {"exact", "estimate"} and len(df) == 2 * 2 * 6
    spec = charts.time_chart(df, "var").to_dict()
    data = next(iter(spec["datasets"].values()))
    t0 = [r for r in data if r["t"] == 0]
    assert all(r["value"] is None or (isinstance(r["value"], float) and np.isnan(r["value"])) for r in t0)
    marks = {layer["mark"]["type"] for layer in spec["layer"]}
    assert marks == {"area", "line", "point"}  # the band, the lines, the estimate's markers and isolated exact points


def test_deep_linear_page_defaults_then_small_run():
    at = open_page("pages/deep_linear.py")
    assert not at.error, [e.value for e in at.error]
    by_label(at.sidebar.slider, "Iterations T").set_value(3)
    by_label(at.sidebar.number_input, "Replicas").set_value(400)
    by_label(at.sidebar.multiselect, "Batch sizes b").set_value([2, 8, 32])
    at.run()
    by_label(at.button, "Run").click()
    at.run()
    wait_for_run(at, "dl")
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    assert any("400 replicas per b" in c.value for c in at.caption)
    assert any("Theorem 4 fit" in m.value or "Weighted fit" in m.value for m in at.markdown)
    assert at.latex, "the exact polynomial is rendered"
    metrics = {m.label: m.value for m in at.metric}
    assert float(metrics["|z| ≤ 4"].rstrip(" %")) >= 90.0


def test_deep_linear_bad_dims_message():
    at = open_page("pages/deep_linear.py")
    by_label(at.sidebar.text_input, "Widths p, p_1, …, p_d (depth 2 to 4)").set_value("3")
    at.run()
    assert not at.exception and any("dims" in e.value for e in at.error)


def test_mlp_page_small_run():
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["setting"] = "mlp"
    at.query_params["dataset"] = '{"name":"digits","train_size":200}'
    at.query_params["hidden"] = "[8]"
    at.query_params["inits"] = "2"
    at.query_params["replicas"] = "4"
    at.query_params["epochs"] = "2"
    at.run()
    at.switch_page("pages/mlp.py")
    at.run()
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    by_label(at.button, "Run").click()
    at.run()
    wait_for_run(at, "mlp")
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    drawn = [c.value for c in at.caption if c.value.startswith("Drawn: replica estimate")]
    assert drawn and all(int(c.split()[3]) > 0 for c in drawn)
    assert any("var(g) decreases with b" in m.value for m in at.markdown)


def test_sequence_page_small_run():
    at = AppTest.from_file(APP, default_timeout=120)
    for key, value in {"setting": "sequence", "replicas": "2", "inits": "1", "epochs": "1", "max_len": "8",
                       "width": "8", "heads": "2", "layers": "1", "batch_sizes": "[64,128]"}.items():
        at.query_params[key] = value
    at.run()
    at.switch_page("pages/sequence.py")
    at.run()
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    by_label(at.button, "Run").click()
    at.run()
    wait_for_run(at, "seq")
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    drawn = [c.value for c in at.caption if c.value.startswith("Drawn: replica estimate")]
    assert drawn and all(int(c.split()[3]) > 0 for c in drawn)


def test_every_preset_parses_and_has_its_theory_and_estimate():
    """Presets are complete configs (Fashion-MNIST's published sizes stand in when the data is absent); the page's
    live computations (theory, estimate) run for each. How fast they are is measured in benchmarks/, not here."""
    from backend import api
    from backend.config import parse_config

    raws = [{"setting": s["name"], "preset": name} for s in api.registry() for name in s["presets"]]
    assert len(raws) == 11
    for raw in raws:
        cfg = parse_config(raw)
        theory = api.theory(cfg)
        est = api.estimate(cfg)
        assert est["seconds"] > 0 and est["memory_bytes"] > 0, raw
        assert theory["t"][0] == 0, raw


def test_streamlit_config_keeps_runs_at_full_speed():
    """The progress fragment reruns every 0.5 s during a run; Streamlit's gc.collect() after each script run held the
    GIL long enough to halve the worker thread's speed, so the app's config turns it off (and keeps its own page
    links)."""
    import tomllib

    import streamlit.config as st_config

    conf = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert conf["runner"]["postScriptGC"] is False
    assert conf["client"]["showSidebarNavigation"] is False
    assert st_config.get_option("runner.postScriptGC") is not None  # the option still exists in this Streamlit


def test_advisor_page_shows_the_exact_best_b_for_every_rule():
    from backend import api
    from backend.config import parse_config

    at = open_page("pages/advisor.py")
    assert not at.error, [e.value for e in at.error]
    by_label(at.sidebar.number_input, "Budget N (samples)").set_value(20000)
    by_label(at.sidebar.checkbox, "Target loss (steps and examples to reach it)").check()
    at.run()
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    metrics = {m.label: m.value for m in at.metric}
    assert set(metrics) == {"best b (none)", "best b (sqrt)", "best b (linear)"}
    want = api.advise(parse_config({"setting": "linear_regression"}), 20000, "sqrt")["best_b"]
    assert metrics["best b (sqrt)"] == str(want)  # the page shows what the API computes for the same inputs
    assert any("B_noise" in c.value for c in at.caption)


def sweep_on_advisor_page(setting: str, batch_sizes: list[int], budget: int, timeout: float = 180) -> AppTest:
    """The advisor page in replica mode: pick the setting, batch sizes and budget, press Run, wait for the sweep."""
    at = open_page("pages/advisor.py")
    by_label(at.sidebar.selectbox, "Setting").set_value(setting)
    at.run()
    by_label(at.sidebar.multiselect, "Batch sizes b").set_value(batch_sizes)
    at.run()
    by_label(at.sidebar.number_input, "Budget N (samples)").set_value(budget)
    at.run()
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    by_label(at.button, "Run").click()
    at.run()
    wait_for_run(at, f"advs_{setting}", timeout=timeout)
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    return at


def test_advisor_page_sweeps_a_replica_setting():
    """Deep linear network: Run starts one replica run per b; the page shows the best b and the loss with its SE."""
    at = sweep_on_advisor_page("deep_linear", [4, 16], 256)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics.get("best b (none)") in ("4", "16")
    table = at.dataframe[0].value
    assert set(table["b"]) == {4, 16} and (table["loss_se"] > 0).all() and list(table["steps"]) == [64, 16]


def test_advisor_page_sweeps_a_classifier_with_b_simple():
    """MLP (tiny): the sweep's table carries B_simple and its chart is drawn beside the best b."""
    at = sweep_on_advisor_page("mlp", [16, 64], 1500, timeout=600)
    table = at.dataframe[0].value
    assert set(table["b"]) == {16, 64} and (table["b_simple"] > 0).all() and (table["loss_se"] > 0).all()
    assert any("B_simple" in c.value for c in at.caption)


def test_sweeps_page_runs_a_tiny_grid_from_the_setting_page_config():
    """Sweeps page, local executor: the base config is the one last set on the setting's page; two fields × two
    values run as four cached replica runs; the chart, the cells' table and the downloads are drawn."""
    import json

    from backend import api, report

    at = open_page("pages/sweeps.py")
    at.session_state["last_config_linear_regression"] = {"setting": "linear_regression", "steps": 8, "replicas": 50,
                                                         "batch_sizes": [2, 16]}
    at.run()
    by_label(at.sidebar.text_input, "Values 1 (JSON list)").set_value("[0, 1]")
    at.run()
    by_label(at.sidebar.selectbox, "Field 2").set_value("lr.c")
    at.run()
    by_label(at.sidebar.text_input, "Values 2 (JSON list)").set_value("[0.05, 0.5]")
    at.run()
    assert any("4 cells (0 cached) in this process" in m.value for m in at.markdown)
    by_label(at.button, "Run").click()
    at.run()
    wait_for_run(at, "sw")
    assert not at.exception and not at.error and not at.warning, (at.exception, [e.value for e in at.error])
    assert any("4 cells (4 cached) in this process" in m.value for m in at.markdown)  # the header after the run
    cells = at.dataframe[0].value
    assert list(cells["seed"]) == [0, 0, 1, 1] and list(cells["lr.c"]) == [0.05, 0.5, 0.05, 0.5]
    out = next(iter(at.session_state["sw_results"].values()))
    for cell in out["cells"]:  # what the page drew is simulate's cached result for the cell's config
        config = api.parse_config(cell["config"])
        assert config.steps == 8 and config.seed == cell["overrides"]["seed"]
        assert report.simulate_output(config, api.cached_simulation(config)) == cell["result"]
    chart = json.loads(at.get("vega_lite_chart")[0].proto.spec)
    assert "dashed: exact" in json.dumps(chart.get("title", ""))
    assert {d.proto.label for d in at.get("download_button")} >= {"Results (CSV)", "Sweep (JSON)"}
    # a bad value list is refused with the cell and the field named, before anything runs
    by_label(at.sidebar.text_input, "Values 2 (JSON list)").set_value("[0.05, -1]")
    at.run()
    assert any("lr.c: must be positive" in e.value and "cell 1" in e.value for e in at.error)


CI_SECONDS = 15.0  # a page's default run is pressed as it is when its estimate is at most this; else a shrunk one
SHRUNK = {  # per page: query parameters (the page's own URL codec) that shrink its default run for CI
    "linear_regression": {"replicas": "200", "steps": "20"},
    "deep_linear": {"replicas": "200", "steps": "10"},
    "mlp": {"epochs": "1", "inits": "1", "replicas": "4"},
    "sequence": {"epochs": "1", "inits": "1", "replicas": "2", "batch_sizes": "[64,128]"},
}


def estimated_seconds(at: AppTest) -> float:
    """The time estimate the page's Run panel shows beside its Run button (backend.costs.format_duration's words)."""
    texts = [m.value for m in at.markdown if re.search(r"— (under 1 s|about [\d.]+ (s|min|h))", m.value)]
    assert texts, "no time estimate shown before Run"
    m = re.search(r"— (under 1 s|about ([\d.]+) (s|min|h))", texts[0])
    return 0.5 if m.group(1) == "under 1 s" else float(m.group(2)) * {"s": 1, "min": 60, "h": 3600}[m.group(3)]


def press_run_and_wait(at: AppTest, timeout: float = 600) -> None:
    """Press the page's Run button and rerun until its background job (session key ``…_job``) has finished."""
    by_label(at.button, "Run").click()
    at.run()
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    end = time.time() + timeout
    while any(k.endswith("_job") and at.session_state[k] is not None for k in at.session_state.keys()):
        assert time.time() < end, "the run did not finish"
        time.sleep(0.5)
        at.run()


def test_every_page_of_the_navigation_runs_its_defaults_without_an_error_box():
    """Each page of the navigation with its defaults: it renders without an exception or an error box, and where it
    has a Run button its estimate and limit check pass before Run, and Run finishes without an error — with the
    defaults when the estimate is short enough for CI, else shrunk (SHRUNK; the advisor's replica check: fewer
    replicas). The advisor's replica check with its defaults leaves out the b whose runs exceed the engine's step
    limit (and says so) instead of failing."""
    from ui.shell import nav_pages

    pages = nav_pages()
    assert {"pages/advisor.py", "pages/sweeps.py"} <= {p.path for p in pages}
    for page in pages:
        at = open_page(page.path)
        assert not at.error, (page.path, [e.value for e in at.error])
        if not any(b.label == "Run" for b in at.button):
            continue
        seconds = estimated_seconds(at)
        if page.path == "pages/advisor.py":
            assert any("left out" in c.value and "fits a budget of up to" in c.value for c in at.caption)
            if seconds > CI_SECONDS:
                by_label(at.number_input, "Replicas per b and rule").set_value(100)
                by_label(at.multiselect, "Batch sizes to check").set_value([64])
                at.run()
        elif page.path == "pages/sweeps.py" and seconds > CI_SECONDS:  # its base: the setting page's config
            at.session_state["last_config_linear_regression"] = {"setting": "linear_regression",
                                                                 **{k: int(v) for k, v in SHRUNK["linear_regression"].items()}}
            at.run()
        elif seconds > CI_SECONDS:
            at = AppTest.from_file(APP, default_timeout=120)
            for key, value in SHRUNK.get(page.url_path, {}).items():
                at.query_params[key] = value
            at.run()
            at.switch_page(page.path)
            at.run()
            assert not at.exception and not at.error, (page.path, at.exception, [e.value for e in at.error])
        assert estimated_seconds(at) <= CI_SECONDS, (page.path, "the shrunk run is still long")
        press_run_and_wait(at)
        assert not at.exception and not at.error, (page.path, at.exception, [e.value for e in at.error])
        assert not any(w.value.startswith("The run") for w in at.warning), page.path
