"""Search over compression strategies (quantization x sparsity x distillation) with Optuna.

The search package turns the planner's predictions into ranked trade-off tables and Pareto fronts and
may run the best candidates for real through :mod:`executors`. Its work is tracked by its own issues;
today it only reserves the package name in the layout the product is built on.
"""
