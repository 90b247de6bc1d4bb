"""Names the constraint flags offer (kept apart so building the CLI parser imports nothing heavy)."""

DEPLOYMENT_TARGETS: tuple[str, ...] = ("cloud_inference", "edge", "consumer_gpu", "cpu", "local")
OBJECTIVES: tuple[str, ...] = ("accuracy", "cost", "speed", "memory")
