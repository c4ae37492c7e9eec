"""TorchServe's token authorization from the client side: the one reader of its keys and the one builder of the
header that carries one (``Authorization: Bearer KEY``)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, Optional


def read_keys(key_file: Path) -> Dict[str, str]:
    """TorchServe's token-authorization keys by API ('inference', 'management') from its key_file.json."""
    try:
        entries = json.loads(Path(key_file).read_text())
        return {api: entry["key"] for api, entry in entries.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}  # no such file (authorization off), or caught while TorchServe is still writing it


def inference_key(key_file: Path) -> Optional[str]:
    """The key clients send to the inference API: $TS_INFERENCE_KEY, else the file $TS_INFERENCE_KEY_FILE names (a
    mounted Kubernetes Secret, as the serving container reads it), else the one in TorchServe's key_file.json."""
    if os.environ.get("TS_INFERENCE_KEY"):
        return os.environ["TS_INFERENCE_KEY"]
    if os.environ.get("TS_INFERENCE_KEY_FILE"):
        return Path(os.environ["TS_INFERENCE_KEY_FILE"]).read_text().strip()
    return read_keys(key_file).get("inference")


def bearer(key: Optional[str]) -> Dict[str, str]:
    """The request header that presents ``key``; none when there is no key (authorization off)."""
    return {"Authorization": f"Bearer {key}"} if key else {}
