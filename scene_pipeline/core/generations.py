"""Storing a drawn generation (scene or portrait): its images, a small thumbnail of each for
the UI, then its record. The record comes last, so a record always names images that exist
(a listing ignores images without a record: an unfinished generation)."""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence

from PIL import Image

from scene_pipeline.contract.outputs import ImageRecord
from scene_pipeline.storage import Bucket, layout
from scene_pipeline.storage.layout import Subject

THUMBNAIL_LONG_SIDE = 128
THUMBNAIL_QUALITY = 70


def thumbnail_jpeg(png: bytes, long_side: int = THUMBNAIL_LONG_SIDE) -> bytes:
    with Image.open(io.BytesIO(png)) as image:
        image.thumbnail((long_side, long_side))
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="JPEG", quality=THUMBNAIL_QUALITY)
    return buffer.getvalue()


def image_size(png: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(png)) as image:
        return image.size


def data_uri(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def store_images(
    bucket: Bucket, script_id: str, subject: Subject, generation: str, pngs: Sequence[bytes]
) -> tuple[list[str], list[str], list[str]]:
    """Write every candidate and its thumbnail; returns (keys, URIs, thumbnail data URIs)."""
    keys = layout.image_keys(script_id, subject, generation, len(pngs))
    thumbs: list[str] = []
    for key, png in zip(keys, pngs, strict=True):
        bucket.write_bytes(key, png, "image/png")
        jpeg = thumbnail_jpeg(png)
        bucket.write_bytes(
            layout.thumbnail_key(script_id, subject, key.rpartition("/")[2]), jpeg, "image/jpeg"
        )
        thumbs.append(data_uri(jpeg))
    return keys, [bucket.uri(k) for k in keys], thumbs


def write_record(bucket: Bucket, subject: Subject, record: ImageRecord) -> None:
    bucket.write_model(
        layout.generation_key(record.script_id, subject, record.generation, ".json"), record
    )


def thumbnails(
    bucket: Bucket, script_id: str, subject: Subject, image_uris: Sequence[str]
) -> list[str]:
    """Data URIs of the stored thumbnails of these images (keys or URIs; missing ones are
    left out)."""
    keys = [layout.thumbnail_key(script_id, subject, uri.rpartition("/")[2]) for uri in image_uris]
    found = bucket.read_many_bytes(keys)
    return [data_uri(found[k]) for k in keys if k in found]


def thumbnails_of_scenes(
    bucket: Bucket, script_id: str, uris_by_scene: Mapping[str, Sequence[str]]
) -> dict[str, list[str]]:
    """Thumbnails (data URIs) of many scenes' images, read in one concurrent batch."""
    keys = {
        scene_id: [
            layout.thumbnail_key(script_id, ("scenes", scene_id), uri.rpartition("/")[2])
            for uri in uris
        ]
        for scene_id, uris in uris_by_scene.items()
    }
    found = bucket.read_many_bytes(k for ks in keys.values() for k in ks)
    return {sid: [data_uri(found[k]) for k in ks if k in found] for sid, ks in keys.items()}
