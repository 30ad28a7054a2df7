"""Altair chart builders: Result → chart. Only aggregated rows (steps × curves) are sent, never per-replica data.

Every chart of the app is built here (pages and ui/ only call these builders). Theory is a solid line drawn on top,
the replica estimate a dashed line with open markers over its see-through band, one colour per batch size (sequential
over b when there are many); a key names exact / replica estimate / band. Log axes never receive a non-positive value:
such values are dropped and the chart says how many. Colours are explicit, so the page and the exported PNG/SVG agree.

The builders live in one module per page family (``base``: what they share; ``against_t``, ``against_b``, ``advisor``,
``critical``, ``sweep``; ``export``); this package names them all, so pages and ui/ call ``charts.<builder>``.
A constant is read where it is defined (``charts.base.MAX_POINTS_PER_CURVE``): change it there, not here.
"""

from backend.charts.base import (MAX_POINTS_PER_CURVE, thinned, positive_floor, b_sort_key, b_order, CATEGORY,  # noqa: F401
                                 MAX_CATEGORICAL, SEQUENTIAL, EXACT_LABEL, ESTIMATE_LABEL, BAND_OPACITY, DIM_OPACITY,
                                 LOG_FLOOR_REL, AUTOSIZE, is_nonnegative, draws_band, b_color, log_axis_format,
                                 log_safe, dropped_note, zero_note, chart_title, message_chart, step_axis,
                                 value_scale, value_axis, drawable_frame, drawn_summary, drawn_caption, every_kth,
                                 isolated_points, rule_color, b_axis)
from backend.charts.against_t import (curves_frame, time_chart, z_chart, SPLIT_TERMS, SUM_TERM, split_chart,  # noqa: F401
                                 b_simple_chart)
from backend.charts.against_b import REPLICA_KEY, b_chart, b_dropped_note  # noqa: F401
from backend.charts.advisor import (ALL_DIVERGED, advisor_frame, advisor_chart, advisor_momentum_frame,  # noqa: F401
                                    advisor_momentum_chart, advisor_b_simple_chart, frontier_chart)
from backend.charts.critical import (NOISE_SCALES, NOISE_SCALE_DASH, b_noise_chart, RULE_DASHES, cbs_chart,  # noqa: F401
                                     branch_loss_chart)
from backend.charts.sweep import (DISCRETE_FIELDS, is_discrete_field, sweep_frame, sweep_chart, DODGE_PX,  # noqa: F401
                                  DODGE_SPAN_PX)
from backend.charts.export import EXPORT_WIDTH, to_png, to_svg  # noqa: F401
