"""Page state shared by every setting page: the raw config from the URL, presets and uploaded configs, the one
validation boundary (an error box naming the field, the user's input escaped), the URL sync, the theory links, and
the base config of the pages that take one (Sweeps, Critical batch size)."""

from __future__ import annotations

import re

import streamlit as st

from backend import api
from backend.cache import default_cache
from backend.errors import one_line

_MARKDOWN = re.compile(r"([\\`*_{}\[\]()#|<>~$])")


def user_text(value) -> str:
    """A message that echoes the user's input, safe to put in st.error/st.warning markdown: one line (control
    characters escaped) and every character that could start Markdown/HTML/LaTeX markup (emphasis, links, images,
    code, tables, tags, math) backslash-escaped, so it shows as typed and loads nothing."""
    return _MARKDOWN.sub(r"\\\1", one_line(str(value)))


def theory_link(section: int, what: str) -> None:
    """A link to the Theory page opened at docs/theory.md §section."""
    st.page_link("pages/theory.py", label=f"Theory §{section}: {what}", icon=":material/functions:",
                 query_params={"section": str(section)})


def initial_raw(prefix: str, setting: str) -> dict:
    """The raw config the widgets start from: the URL's query parameters on first load, then presets/uploads."""
    if f"{prefix}_raw" not in st.session_state:
        notes: list[str] = []
        try:
            raw = api.from_query(dict(st.query_params))
            if raw.get("setting", setting) != setting:
                raw = {}
            raw = valid_fields(raw, setting, notes)
        except api.ConfigError as e:
            notes.append(f"Ignoring the link's config: {user_text(e)}")
            raw = {}
        st.session_state[f"{prefix}_raw"] = raw
        st.session_state[f"{prefix}_gen"] = 0
        st.session_state[f"{prefix}_link_notes"] = notes
    for note in st.session_state.get(f"{prefix}_link_notes", []):  # shown until a preset or a file is loaded
        st.warning(note)
    return st.session_state[f"{prefix}_raw"]


def valid_fields(raw: dict, setting: str, notes: list[str]) -> dict:
    """The link's raw config without the fields that do not validate; each one left out is named with the reason
    in ``notes`` (one line each), so a link's value is never changed or dropped silently."""
    raw = dict(raw)
    if not set(raw) - {"setting"}:
        return raw
    while True:
        try:
            api.parse_config({**raw, "setting": setting})
            return raw
        except api.ConfigError as e:
            top = e.field.split(".")[0].split("[")[0]
            if top not in raw or top == "setting":
                notes.append(f"Ignoring the link's config: {user_text(e)}")
                return {}
            notes.append(f"Ignoring the link's {user_text(top)} (the default is used): {user_text(e)}")
            del raw[top]


def field_helpers(prefix: str, setting: str):
    """(raw0, d, k): the starting raw config, d(field) → its value or the default, k(name) → a widget key that
    changes when a preset or file is loaded (so the widgets take the new values)."""
    defaults = api.defaults(setting)
    raw0 = initial_raw(prefix, setting)
    gen = st.session_state[f"{prefix}_gen"]

    def d(key: str):
        return raw0.get(key, defaults[key])

    def k(name: str) -> str:
        return f"{prefix}_{name}_{gen}"

    return raw0, d, k


def load(prefix: str, raw: dict) -> None:
    """Start the widgets from ``raw`` (a preset, if it names one, expanded into its fields)."""
    st.session_state[f"{prefix}_raw"] = api.expand_preset(raw)
    st.session_state[f"{prefix}_gen"] += 1
    st.session_state[f"{prefix}_link_notes"] = []
    st.rerun()


def presets_and_upload(prefix: str, setting: str) -> None:
    """Apply one of the setting's presets (a complete config), or load a config file downloaded earlier."""
    gen = st.session_state[f"{prefix}_gen"]
    names = api.presets(setting)
    applied = st.session_state.get(f"{prefix}_preset_applied")  # the selector shows the preset last applied
    with st.sidebar.expander("Presets and saved configs", expanded=False):
        preset = st.selectbox("Preset", names, index=names.index(applied) if applied in names else 0,
                              key=f"{prefix}_preset_{gen}")
        if st.button("Apply preset", key=f"{prefix}_apply_{gen}"):
            st.session_state[f"{prefix}_preset_applied"] = preset
            load(prefix, {"setting": setting, "preset": preset})
        up = st.file_uploader("Load a config (JSON)", type=["json"], key=f"{prefix}_cfgup_{gen}")
        if up is not None and st.button("Load config", key=f"{prefix}_load_{gen}"):
            try:
                load(prefix, api.loads(up.getvalue().decode("utf-8")))
            except (api.ConfigError, UnicodeDecodeError) as e:
                st.error(f"Cannot load that file: {user_text(e)}")


def clear_cache_button() -> None:
    if st.sidebar.button("Clear cache", help="Delete every cached theory and replica result"):
        removed = default_cache().clear()
        st.sidebar.success(f"Cleared {removed} cached results.")


def validated(raw: dict, remember: bool = True):
    """The validated config (one boundary for widgets, files and links), or an error box and stop; syncs the URL.
    ``remember``: a setting page's config, kept as that setting's last config (the Sweeps page starts from it)."""
    try:
        config = api.parse_config(raw)
    except api.ConfigError as e:
        st.error(f"Check the inputs — {user_text(e)}")
        st.stop()
    sync_url(config)
    if remember:
        st.session_state[last_config_key(config.setting)] = config.to_json()
    return config


def last_config_key(setting: str) -> str:
    """The session key of the config last set on a setting's page."""
    return f"last_config_{setting}"


def sync_url(config) -> None:
    query = api.to_query(config)
    if dict(st.query_params) != query:
        st.query_params.from_dict(query)


def base_config(prefix: str, label: str, default_setting: str | None = None, presets: bool = False
                ) -> tuple[str, dict, object]:
    """The sidebar's setting and its ``label`` config (the Sweeps and Critical batch size pages): the config last set
    on that setting's page in this session (its defaults if none), its defaults, a preset (``presets``) or an uploaded
    config file. Returns (setting, the raw config, the parsed config); a file that cannot be read, an invalid config
    or one for another setting stops the page with one red line."""
    sb = st.sidebar
    titles = {p["name"]: p["title"] for p in api.setting_pages()}
    names = list(titles)
    setting = sb.selectbox("Setting", names, index=names.index(default_setting) if default_setting in names else 0,
                           format_func=titles.get, key=f"{prefix}_setting")
    sources = ["the setting's page", "defaults", *(["a preset"] if presets else []), "a config file"]
    source = sb.radio(label, sources, key=f"{prefix}_source",
                      help="the setting's page: the config last set there in this session (its defaults if none)")
    raw: dict = st.session_state.get(last_config_key(setting)) or api.defaults(setting)
    if source == "defaults":
        raw = api.defaults(setting)
    elif source == "a preset":
        raw = {"setting": setting,
               "preset": sb.selectbox("Preset", api.presets(setting), key=f"{prefix}_preset_{setting}")}
    elif source == "a config file":
        up = sb.file_uploader("Config (JSON)", type=["json"], key=f"{prefix}_upload")
        if up is None:
            st.info("Load a config file (as downloaded from a setting's page).")
            st.stop()
        try:
            raw = api.loads(up.getvalue().decode("utf-8"))
        except (api.ConfigError, UnicodeDecodeError) as e:
            st.error(f"Cannot read that file: {user_text(e)}")
            st.stop()
    try:
        config = api.parse_config(raw)
    except api.ConfigError as e:
        st.error(f"The {label.lower()} is not valid — {user_text(e)}")
        st.stop()
    if config.setting != setting:
        st.error(f"The config file is for the setting {user_text(config.setting)}, not {titles[setting]}.")
        st.stop()
    return setting, raw, config
