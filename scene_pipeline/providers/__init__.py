"""The provider seam: prompt writers and image makers, free of Dagster.

`base` defines the interfaces and the data they exchange; `offline` holds the embedded
providers that need no keys. Real clients (OpenAI, KLING, OpenAI-compatible images) implement
the same interfaces, so the assets never know which one they talk to.
"""
