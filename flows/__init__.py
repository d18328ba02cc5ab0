"""Prefect flows: order of steps, retries, waits, approvals, events and artifacts. The work lives in the engine.

Importing this package changes nothing in the process (no environment variables, no logging
set-up); what a run needs is set up by the flows themselves or by the CLI command that starts
them.
"""
