"""The accelerator catalog: sourced data files, a typed loader and name lookup."""
