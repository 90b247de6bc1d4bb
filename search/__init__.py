"""Search over compression strategies (quantization x sparsity x distillation) with Optuna.

The search package turns the planner's predictions into ranked trade-off tables and Pareto fronts and
may run the best candidates for real through :mod:`executors`. Its work is tracked by its own issues;
Its commands register through `search.cli` (the `fitplan.commands` entry point).
"""
