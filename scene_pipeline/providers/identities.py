"""Provider identities from configuration alone: part of every content hash, so they must be
known without building a client (or importing an SDK). Bump a version when a change to that
provider changes its output for the same input."""

from __future__ import annotations

from typing import Final

from scene_pipeline.providers.base import ProviderIdentity

# The OpenAI prompt writer's instructions and answer models (providers/openai_messages.py).
OPENAI_WRITER_VERSION: Final = "2"
# KLING request assembly (providers/kling.py).
KLING_MAKER_VERSION: Final = "2"
# OpenAI-compatible images request assembly (providers/openai_images.py).
OPENAI_IMAGES_VERSION: Final = "2"

TEMPLATE_WRITER: Final = ProviderIdentity(
    provider="offline", model="template", version="2", offline=True
)
PLACEHOLDER_MAKER: Final = ProviderIdentity(
    provider="offline", model="placeholder", version="2", offline=True
)


def openai_writer(model: str) -> ProviderIdentity:
    return ProviderIdentity(provider="openai", model=model, version=OPENAI_WRITER_VERSION)


def kling(model: str, reference_model: str | None) -> ProviderIdentity:
    """`reference_model` is None when scenes are drawn without reference portraits."""
    name = model if reference_model is None else f"{model}+refs:{reference_model}"
    return ProviderIdentity(provider="kling", model=name, version=KLING_MAKER_VERSION)


def openai_images(model: str) -> ProviderIdentity:
    return ProviderIdentity(provider="openai-images", model=model, version=OPENAI_IMAGES_VERSION)
