"""What the pipeline decides and does, as plain functions (no Dagster): planning, hashing,
rendering, portraits, manifests, intake, the inbox tick, the nightly selection, leases and
the operators' state."""
