"""Console scripts of the runtime: ade-edit, ade-collect, ade-replay (ade-traces lives with the format)."""
