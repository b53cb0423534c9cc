"""A checkpoint's small JSON files (``config.json``, ``model_index.json``), read without loading
weights or importing torch: from a local directory, a built tiny checkpoint, or a hub id through
``huggingface_hub`` (its cache only when the hub is off or unreachable).

``omnistage validate`` reads these to refuse a model a stage kind cannot run, and ``omnistage
serve MODEL`` to pick the model's recipe.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omnistage.checkpoints.packaged import packaged_dir, parse_packaged
from omnistage.checkpoints.refs import parse_tiny
from omnistage.errors import OmnistageError


class CheckpointUnavailable(OmnistageError, ValueError):
    """A checkpoint's files cannot be read (not found, offline and not cached, not a model)."""


def local_dir(ref: str) -> Path | None:
    """The directory a resolved reference loads from without a download, or None for a hub id."""
    packaged = parse_packaged(ref)
    if packaged is not None:
        return packaged_dir(packaged)
    tiny = parse_tiny(ref)
    if tiny is not None:
        from omnistage.models.catalog import cache_root
        root = cache_root() / tiny.name
        return root / tiny.sub if tiny.sub else root
    path = Path(ref)
    return path if path.is_dir() else None


def read_json(ref: str, filename: str) -> dict[str, Any] | None:
    """``filename`` of the checkpoint ``ref`` as a dict; None when the checkpoint has no such file.
    Raises CheckpointUnavailable when the checkpoint itself cannot be reached."""
    directory = local_dir(ref)
    if directory is not None:
        path = directory / filename
        return json.loads(path.read_text()) if path.is_file() else None
    return _hub_json(ref, filename)


def _hub_json(repo: str, filename: str) -> dict[str, Any] | None:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError)
    try:
        return json.loads(Path(hf_hub_download(repo, filename)).read_text())
    except LocalEntryNotFoundError:  # (an EntryNotFoundError too) offline or unreachable, and not cached
        if _cached_repo(repo):
            return None  # the repo is cached, this file is not part of it
        from huggingface_hub import constants
        why = "the hub is off (HF_HUB_OFFLINE=1)" if constants.HF_HUB_OFFLINE else "the hub cannot be reached"
        raise CheckpointUnavailable(f"cannot download {repo!r}: {why} and it is not in the hub cache "
                                    f"({_hub_cache()}); download it where a hub is reachable, or pass a "
                                    "local checkpoint directory") from None
    except EntryNotFoundError:
        return None
    except GatedRepoError:
        raise CheckpointUnavailable(f"{repo!r} is gated on the hub: accept its terms and log in "
                                    "(huggingface-cli login or HF_TOKEN)") from None
    except RepositoryNotFoundError:
        raise CheckpointUnavailable(f"no model {repo!r} on the hub (or it is private; set HF_TOKEN)") from None
    except HfHubHTTPError as exc:
        raise CheckpointUnavailable(f"the hub refused {repo!r}/{filename}: {exc}") from None


def _hub_cache() -> str:
    from huggingface_hub import constants
    return str(constants.HF_HUB_CACHE)


def _cached_repo(repo: str) -> bool:
    return (Path(_hub_cache()) / f"models--{repo.replace('/', '--')}" / "snapshots").is_dir()


# What a server never loads: original/consolidated weights beside the transformers ones, other
# frameworks' formats, GGUF, and diffusers' alternative variants.
SKIPPED = ["original/*", "*.pth", "*.ckpt", "*.h5", "*.msgpack", "*.onnx", "*.onnx_data", "*.gguf", "*.ot",
           "*.tflite", "*.mlmodel", "flax_model*", "tf_model*", "*.fp16.*", "*.non_ema.*"]


def download(ref: str) -> str | None:
    """Fetch a hub checkpoint's files into the hub cache (a no-op for local ones), with the hub
    client's progress bars on the terminal; returns the snapshot directory (None: local)."""
    if local_dir(ref) is not None:
        return None
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    try:
        return snapshot_download(ref, ignore_patterns=SKIPPED)
    except LocalEntryNotFoundError:
        raise CheckpointUnavailable(f"cannot download {ref!r}: the hub cannot be reached and its files are not all "
                                    f"in the hub cache ({_hub_cache()})") from None
    except HfHubHTTPError as exc:
        raise CheckpointUnavailable(f"downloading {ref!r} failed: {exc}") from None


def local_snapshot(ref: str) -> Path | None:
    """A hub checkpoint's directory in the hub cache, when it is there (never downloads)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError
    try:
        return Path(snapshot_download(ref, local_files_only=True, ignore_patterns=SKIPPED))
    except (LocalEntryNotFoundError, ValueError):
        return None
