"""Images a probe carries by reference (``connectors.messages.ImageRef``).

``by_reference`` runs at submit, in the API process (the ``ar`` kind names it as its
``probe_by_reference``): it reads each file's header and digest there, once, so that the AR
stage is sent a few hundred bytes per image instead of the files. ``resolved`` turns the
references back into images an AR stage can count and key but never decodes.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from omnistage.connectors.messages import ImageRef
from omnistage.encoders.media import LazyImage, open_image


def by_reference(images: Sequence[Any]) -> tuple[list[bytes], list[ImageRef]] | None:
    """The files (data URLs decoded) and their references; None unless every image is a file
    (bytes or a data URL). A file whose header is bad raises MediaError (a 400 at submit)."""
    if not all(isinstance(src, (bytes, bytearray)) or (isinstance(src, str) and src.startswith("data:"))
               for src in images):
        return None
    opened = [open_image(src) for src in images]
    files = [im.data for im in opened]
    assert all(f is not None for f in files)
    return files, [ImageRef(im.digest, *im.size) for im in opened]  # type: ignore[arg-type,misc]


def resolved(images: Sequence[Any]) -> list[Any]:
    """``images`` with every ImageRef as a LazyImage known by digest and size."""
    return [LazyImage.by_reference(im.digest, (im.width, im.height)) if isinstance(im, ImageRef) else im
            for im in images]
