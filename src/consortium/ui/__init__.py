"""Human-facing output beside the CLI: the static HTML reports (`report`, one renderer for every
report) and, later, the dashboard that reuses its templates."""
