"""crowdloop: an active-learning labeling pipeline with human annotation vendors.

The core package holds configuration, record types, errors, the plug-in registry, the
round engine, pay policy, reports and the CLI. It never imports Prefect, boto3, vendor
SDKs or torch at module level: those live in the outer packages and are loaded lazily.
"""

__version__ = "0.1.0"  # the only place the version is written (pyproject.toml reads it)
