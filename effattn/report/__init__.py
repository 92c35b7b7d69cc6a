"""Reports people read at a glance, built from results files alone: tables (`tables`), plots
(`plots`), pattern pictures (`patterns`), the HTML page (`html`), the whole report (`build`) and
the point-by-point comparison of two runs (`compare`)."""

from .build import build_report, measurement_faults
from .compare import Comparison, compare_runs
from .patterns import pattern_pictures
from .plots import make_plots
from .tables import pivot, table_md

__all__ = [
    "build_report",
    "measurement_faults",
    "Comparison",
    "compare_runs",
    "pattern_pictures",
    "make_plots",
    "pivot",
    "table_md",
]
