"""Prefect flows: order of steps, retries, waits and artifacts. The work lives in the engine."""

import os

# The ephemeral API server takes 10–30 s to start on a small machine; Prefect's 20 s default
# is too tight. Users can still override it.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
# Usage telemetry cannot leave an offline machine and only logs errors there; opt in explicitly.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
