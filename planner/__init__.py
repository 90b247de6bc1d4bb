"""fitplan's planner: model specs, precision formats, the memory/speed/cost model and the CLI."""
