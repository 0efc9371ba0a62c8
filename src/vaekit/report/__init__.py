"""Pictures and the report: image grids, plots, interpolations, and the one-page HTML report
of a run."""
