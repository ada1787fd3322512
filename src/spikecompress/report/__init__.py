"""Reports: tables and plots (lazy matplotlib) from Metrics records."""

from spikecompress.report.render import table_rows, write_report
from spikecompress.report.tables import print_comparison, print_metrics

__all__ = ["print_comparison", "print_metrics", "table_rows", "write_report"]
