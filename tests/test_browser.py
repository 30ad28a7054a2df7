"""Real browser: `streamlit run app.py` headless on a free loopback port, driven by Playwright in Debian's Chromium.

Every page opens; on the linear-regression page a slider and the batch-size selection change, a small Run completes,
the theory and the estimate are both drawn, no exception box shows; two sessions with different configs run at the
same time and each gets its own result. A screenshot per page goes to test-output/browser/.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import ROOT

CHROMIUM = "/usr/bin/chromium"
OUT = ROOT / "test-output" / "browser"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = free_port()
    env = {**os.environ, "BATCHVAR_CACHE_DIR": str(tmp_path_factory.mktemp("browser-cache"))}
    log = open(tmp_path_factory.mktemp("log") / "streamlit.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
                             "--server.address", "127.0.0.1", "--server.port", str(port),
                             "--browser.gatherUsageStats", "false"], cwd=ROOT, env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("streamlit did not start within 90 s")
    yield url
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:  # a worker thread still busy on a loaded machine
        proc.kill()
        proc.wait(10)
    log.close()


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium (scripts/ensure_chromium.sh)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def shot(page, name: str) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(OUT / f"{name}.png"), full_page=True)


def no_exception(page) -> None:
    assert page.locator('[data-testid="stException"]').count() == 0


def wait_for_estimates(page, n_charts: int = 3, timeout_s: float = 180) -> list[tuple[int, int]]:
    """Wait until every 'Drawn:' caption reports both exact and estimate points; return (exact, estimate) pairs."""
    deadline = time.time() + timeout_s
    pairs: list[tuple[int, int]] = []
    while time.time() < deadline:
        texts = page.get_by_text(re.compile(r"^Drawn: exact")).all_inner_texts()
        pairs = [tuple(int(x) for x in re.findall(r"(\d+) points", t)) for t in texts]
        if len(pairs) == n_charts and all(len(p) == 2 and p[0] > 0 and p[1] > 0 for p in pairs):
            return pairs
        time.sleep(0.5)
    raise AssertionError(f"estimates not drawn in time: {pairs}")


def chart_rendered(page, need_band: bool = True, timeout_ms: int = 60_000) -> None:
    """The first Altair chart is rendered in the DOM: Vega's SVG has line marks (theory and/or estimate) and, for the
    pages with exact theory, area marks (the replica estimate's 95 % band)."""
    chart = page.locator("[data-testid='stVegaLiteChart']").first
    chart.locator("g.mark-line path").first.wait_for(state="attached", timeout=timeout_ms)
    if need_band:
        chart.locator("g.mark-area path").first.wait_for(state="attached", timeout=timeout_ms)


def lines_drawn_then_close(page, name: str) -> None:
    """The first chart's line marks are in the DOM, no exception box shows; a screenshot, and the page closes."""
    page.locator("[data-testid='stVegaLiteChart']").first.locator("g.mark-line path").first.wait_for(
        state="attached", timeout=60_000)
    no_exception(page)
    shot(page, name)
    page.close()


def open_lr(page, url: str, query: str = "") -> None:
    page.goto(f"{url}/linear_regression{query}")
    page.get_by_role("slider", name="Iterations T").wait_for(timeout=90_000)


def test_home_page(server, browser):
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    page.goto(server)
    page.get_by_text("batchvar — the mini-batch size and the dynamics of SGD").wait_for(timeout=90_000)
    for name in ("Linear regression", "Deep linear network", "MLP classifier", "Sequence model"):
        page.get_by_role("link", name=re.compile(name)).first.wait_for(timeout=30_000)
    no_exception(page)
    shot(page, "home")
    page.close()


def test_a_page_opened_by_its_url_has_the_navigation(server, browser):
    """A fresh session that opens /sweeps directly gets the app's frame: every page's link in the sidebar (Streamlit
    alone would run pages/sweeps.py without app.py), and the page itself."""
    context = browser.new_context(viewport={"width": 1300, "height": 900})  # a fresh session, no earlier visit
    page = context.new_page()
    page.goto(f"{server}/sweeps")
    page.get_by_text("Sweeps: a grid of replica runs").first.wait_for(timeout=90_000)
    sidebar = page.locator('[data-testid="stSidebar"]')
    for name in ("Home", "Linear regression", "Deep linear network", "MLP classifier", "Batch-size advisor", "Theory"):
        sidebar.get_by_role("link", name=re.compile(name)).first.wait_for(timeout=30_000)
    assert page.title() == "Sweeps · batchvar"
    no_exception(page)
    context.close()


def test_every_page_names_its_browser_tab_and_home_links_it(server, browser):
    """document.title is each page's own title (the navigation's), and Home links every page of the navigation."""
    from ui.shell import HOME, nav_pages

    page = browser.new_page(viewport={"width": 1300, "height": 900})
    for p in nav_pages():
        page.goto(f"{server}/{p.url_path}")
        page.wait_for_function("t => document.title === t", arg=f"{p.title} · batchvar", timeout=90_000)
    page.goto(server)
    main = page.locator('[data-testid="stMain"]')
    for p in nav_pages():
        if p != HOME:
            main.get_by_role("link", name=re.compile(re.escape(p.title))).first.wait_for(timeout=30_000)
    page.close()


def test_theory_page_renders_its_mathematics(server, browser):
    """Every section of docs/theory.md on one page: KaTeX draws the formulas (inline and display), none fails to
    parse, and no pseudo-LaTeX is left in the text a reader sees."""
    page = browser.new_page(viewport={"width": 1300, "height": 1100})
    page.goto(f"{server}/theory?section=1")
    page.get_by_role("heading", name=re.compile("§1 Linear regression")).first.wait_for(timeout=90_000)
    page.locator('[data-testid="stExpander"] summary').first.click(timeout=120_000)
    page.get_by_role("heading", name=re.compile("§7 The batch-size advisor")).last.wait_for(timeout=60_000)
    page.locator(".katex").first.wait_for(timeout=30_000)
    main = page.locator('[data-testid="stMain"]')
    assert main.locator(".katex-error").count() == 0
    assert main.locator('[data-testid="stLatex"] .katex-display, .katex-display').count() >= 10
    text = main.evaluate("e => { const c = e.cloneNode(true); c.querySelectorAll('.katex, code').forEach("
                         "x => x.remove()); c.querySelectorAll('[data-testid=stIconMaterial]').forEach(x => x.remove()); "
                         "return c.innerText; }")
    assert not re.search(r"_\{|\^|\\[a-z]{2,}|\w_\w", text), re.findall(r".{20}(?:_\{|\^|\w_\w).{20}", text)[:5]
    no_exception(page)
    shot(page, "theory_all_sections")
    page.close()


def test_advisor_replica_check_run(server, browser):
    """The advisor's Replica check from its widgets, kept short (a small budget, 100 replicas): Run, and the table of
    z-scores against the exact final loss is drawn."""
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.goto(f"{server}/advisor")
    page.get_by_text("best b (linear)").first.wait_for(timeout=90_000)
    for label, value in (("Budget N (samples)", "2000"), ("Replicas per b and rule", "100")):
        entry = page.get_by_label(label)
        entry.fill(value)
        entry.press("Enter")
        page.wait_for_timeout(1500)
    # the reruns the entries started have finished: the Run box says 100 replicas, and a rerun's stale copy of the
    # form (two Run buttons for a moment on a loaded box) is gone
    page.get_by_text("Run 100 replicas of SGD").first.wait_for(timeout=90_000)
    run = page.get_by_role("button", name="Run", exact=True)
    expect(run).to_have_count(1, timeout=90_000)
    run.click()
    page.get_by_text(re.compile(r"^z = \(replica estimate")).first.wait_for(timeout=180_000)
    no_exception(page)
    shot(page, "advisor_replica_check")
    page.close()


def test_theory_page_from_a_settings_link(server, browser):
    """The MLP page's theory link opens the Theory page at §3 (docs/theory.md, shipped with the app)."""
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    page.goto(f"{server}/mlp")
    # the page's first run ends by writing its config into the URL; a click before that lands on the Theory page with
    # the MLP config's query instead of ?section=3 (seen once on a loaded 2-core box): click after it
    page.wait_for_url(re.compile(r"/mlp\?setting=mlp"), timeout=90_000)
    page.get_by_role("link", name=re.compile("Theory §3")).first.click()
    page.wait_for_url(re.compile(r"/theory\?section=3"), timeout=60_000)
    page.get_by_role("heading", name=re.compile("§3 Any model")).first.wait_for(timeout=60_000)
    page.get_by_text("population", exact=False).first.wait_for(timeout=90_000)  # KaTeX takes a while on a busy box
    no_exception(page)
    shot(page, "theory")
    page.close()


def test_advisor_page(server, browser):
    """The advisor draws the exact final loss against b for the three scaling rules, live, with the best b."""
    page = browser.new_page(viewport={"width": 1300, "height": 1100})
    page.goto(f"{server}/advisor")
    page.get_by_text("best b (linear)").first.wait_for(timeout=90_000)
    lines_drawn_then_close(page, "advisor")


def test_sweeps_page_run(server, browser):
    """The Sweeps page from its widgets: seeds × a smaller run (replicas and steps as grid fields of one value each),
    Run, and the chart draws the estimates with the exact dashed line; the cells' table lists the three seeds."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{server}/sweeps")
    page.get_by_text("3 cells (0 cached) in this process").first.wait_for(timeout=90_000)
    for i, (field, values) in enumerate((("replicas", "[60]"), ("steps", "[5]")), start=2):
        box = page.locator('[data-testid="stSelectbox"]').filter(has_text=f"Field {i}")
        box.click()
        page.keyboard.type(field)
        page.get_by_role("option", name=field, exact=True).click()
        entry = page.get_by_label(f"Values {i} (JSON list)")
        entry.fill(values)
        entry.press("Enter")
    page.get_by_text("3 cells (0 cached) in this process — under 1 s").first.wait_for(timeout=60_000)
    page.get_by_role("button", name="Run", exact=True).click()
    page.get_by_text("3 cells; each point is a replica estimate").first.wait_for(timeout=180_000)
    page.get_by_text("3 cells (3 cached) in this process").first.wait_for(timeout=30_000)  # the header after Run
    lines_drawn_then_close(page, "sweeps")


def test_linear_regression_page_run(server, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    open_lr(page, server, "?replicas=100")
    slider = page.get_by_role("slider", name="Iterations T")
    slider.focus()
    page.keyboard.press("Home")
    for _ in range(14):
        page.keyboard.press("ArrowRight")
    page.wait_for_url(re.compile(r"steps=15"), timeout=30_000)
    batch = page.locator('[data-testid="stMultiSelect"]').filter(has_text="Batch sizes b")
    batch.get_by_role("button", name=re.compile("256")).first.click()
    page.wait_for_url(re.compile(r"batch_sizes=%5B2%2C16%2C64%5D"), timeout=30_000)
    page.get_by_role("button", name="Run").click()
    pairs = wait_for_estimates(page)
    # 3 batch sizes × t = 0..15, theory drawn for each; var(∇L(w_0)) = 0 exactly, so the second chart's log axis
    # leaves out t = 0 for each b
    assert pairs == [(3 * 16, 3 * 16), (3 * 15, 3 * 15), (3 * 16, 3 * 16)], pairs
    chart_rendered(page)
    page.get_by_role("tab", name="Agreement").click()
    page.get_by_text("|z| ≤ 4").first.wait_for(timeout=30_000)
    no_exception(page)
    shot(page, "linear_regression")
    page.close()


def test_deep_linear_page_run(server, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{server}/deep_linear?replicas=500")
    slider = page.get_by_role("slider", name="Iterations T")
    slider.wait_for(timeout=90_000)
    slider.focus()
    page.keyboard.press("Home")
    for _ in range(9):
        page.keyboard.press("ArrowRight")
    page.wait_for_url(re.compile(r"steps=10"), timeout=30_000)
    batch = page.locator('[data-testid="stMultiSelect"]').filter(has_text="Batch sizes b")
    batch.get_by_role("button", name=re.compile("16")).first.click()
    page.wait_for_url(re.compile(r"batch_sizes=%5B1%2C2%2C4%2C8%5D"), timeout=30_000)
    page.get_by_role("button", name="Run").click()
    pairs = wait_for_estimates(page, n_charts=4)  # two layers, their sum, the loss
    chart_rendered(page)
    assert all(e == 4 * 2 for e, _ in pairs), pairs  # exact at t = 0 and t = 1 for each of the 4 batch sizes
    assert all(s == 4 * 11 for _, s in pairs), pairs
    page.get_by_role("tab", name="Polynomial in 1/b").click()
    page.get_by_text(re.compile(r"^Degree \d+ in 1/b; method")).wait_for(timeout=30_000)
    no_exception(page)
    shot(page, "deep_linear")
    page.close()


def test_mlp_page_run(server, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{server}/mlp?setting=mlp&dataset=%7B%22name%22%3A%22digits%22%2C%22train_size%22%3A200%7D"
              "&hidden=%5B8%5D&inits=2&replicas=4&epochs=3")
    slider = page.get_by_role("slider", name="Epochs")
    slider.wait_for(timeout=90_000)
    slider.focus()
    page.keyboard.press("ArrowLeft")
    page.wait_for_url(re.compile(r"epochs=2"), timeout=30_000)
    page.get_by_role("button", name="Run").click()
    caption = page.get_by_text(re.compile(r"^Drawn: replica estimate [1-9]")).first
    caption.wait_for(timeout=180_000)
    chart_rendered(page)
    no_exception(page)
    shot(page, "mlp")
    page.close()


def test_sequence_page_run(server, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{server}/sequence?setting=sequence&replicas=2&inits=1&max_len=8&width=8&heads=2&layers=1"
              "&batch_sizes=%5B32%2C128%5D")
    slider = page.get_by_role("slider", name="Epochs")
    slider.wait_for(timeout=90_000)
    slider.focus()
    page.keyboard.press("Home")
    page.keyboard.press("ArrowRight")
    page.wait_for_url(re.compile(r"epochs=2"), timeout=30_000)
    page.get_by_role("button", name="Run").click()
    page.get_by_text(re.compile(r"^Drawn: replica estimate [1-9]")).first.wait_for(timeout=180_000)
    chart_rendered(page)
    no_exception(page)
    shot(page, "sequence")
    page.close()


def test_your_model_page_run(server, browser):
    """Your model: the shipped digits MLP example (its laptop preset, fewer steps), Run, and the variance chart draws
    the replica estimate with its band; no exception box."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{server}/torch_model?setting=torch_model&steps=20&record_every=10&replicas=4&inits=2")
    page.get_by_role("button", name="Run").wait_for(timeout=90_000)
    page.get_by_role("button", name="Run").click()
    page.get_by_text(re.compile(r"^Drawn: replica estimate [1-9]")).first.wait_for(timeout=180_000)
    chart_rendered(page)
    no_exception(page)
    shot(page, "torch_model")
    page.close()


def test_critical_batch_page(server, browser):
    """Critical batch size, linear regression (exact): the CBS along training and the branch losses are drawn (line
    marks) with a metric per scaling rule; no exception box."""
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.goto(f"{server}/critical_batch")
    page.get_by_text(re.compile(r"critical b at t = \d+ \(none\)")).first.wait_for(timeout=120_000)
    lines_drawn_then_close(page, "critical_batch")


def test_two_sessions_run_different_configs_at_once(server, browser):
    ctx_a, ctx_b = browser.new_context(), browser.new_context()
    a, b = ctx_a.new_page(), ctx_b.new_page()
    open_lr(a, server, "?replicas=100&steps=11&batch_sizes=%5B4%2C8%5D")
    open_lr(b, server, "?replicas=100&steps=21&batch_sizes=%5B32%5D")
    a.get_by_role("button", name="Run").click()
    b.get_by_role("button", name="Run").click()
    pairs_a = wait_for_estimates(a)
    pairs_b = wait_for_estimates(b)
    chart_rendered(a)
    chart_rendered(b)
    assert pairs_a == [(2 * 12, 2 * 12), (2 * 11, 2 * 11), (2 * 12, 2 * 12)], pairs_a  # var(∇L(w_0)) = 0: t = 0 off
    assert pairs_b == [(22, 22), (21, 21), (22, 22)], pairs_b
    no_exception(a)
    no_exception(b)
    shot(a, "concurrent_a")
    shot(b, "concurrent_b")
    ctx_a.close()
    ctx_b.close()
