"""Streamlit building blocks shared by the pages (outside pages/, so Streamlit never lists them as pages)."""

from ui.results import classifier_results, downloads, polynomial_table, time_chart_with_caption  # noqa: F401
from ui.run import RESUMABLE_RUN, divergence_notice, job_panel, reduction_note, resumable_run, run_panel  # noqa: F401
from ui.state import (base_config, clear_cache_button, field_helpers, initial_raw, load,  # noqa: F401
                      presets_and_upload, sync_url, last_config_key, theory_link, user_text, validated)
from ui import widgets  # noqa: F401
from ui.tables import per_b_table  # noqa: F401
from ui.advisor_view import frontier, momentum_view, schedule_comparison  # noqa: F401
from ui.dataset_input import regression_dataset  # noqa: F401
from ui.exact_views import agreement_view, theorem_checks  # noqa: F401
