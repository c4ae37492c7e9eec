"""A client for TorchServe's inference gRPC API (port 7070), from the proto TorchServe ships inside its jar.

TorchServe's wheel has no Python stubs: its ``inference.proto`` lives only in ``ts/frontend/model-server.jar``.
This module extracts it (with ``google/rpc/status.proto``, which it imports), generates the stubs with
grpcio-tools into a cache directory once, and calls ``Predictions``. Each entry of the request's ``input`` map
reaches the handler as a field of its row (no content type), so ``{"data": image bytes}`` is the raw-body
request's image and other entries (``topk``, ``scales``, ``heatmap``, ...) are its options, as multipart fields
are. gRPC metadata does not reach the handler; the key goes in the ``authorization`` metadata.

    python -m anysize_tools.grpc_client --model demo-fcn --image photo.jpg [--address 127.0.0.1:7070] [--key-file F]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import shutil
import sys
import tempfile
import zipfile
from functools import lru_cache
from pathlib import Path
from typing import Dict, Tuple

from .auth import inference_key
from .paths import SERVE_DIR

PROTOS = ("inference.proto", "google/rpc/status.proto")
STUB_DIR = Path.home() / ".cache" / "anysize" / "torchserve-grpc"


def torchserve_jar() -> Path:
    import ts

    return Path(ts.__file__).parent / "frontend" / "model-server.jar"


@lru_cache(maxsize=1)
def stubs() -> Tuple[object, object]:
    """(inference_pb2, inference_pb2_grpc), generated from TorchServe's own proto on first use, into a directory
    named by the protos' hash (another TorchServe's protos get their own); written aside and renamed into place, so
    two processes generating at once do not read each other's half-written files."""
    from grpc_tools import protoc

    with zipfile.ZipFile(torchserve_jar()) as archive:
        protos = {name: archive.read(name) for name in PROTOS}
    out = STUB_DIR / hashlib.sha256(b"".join(protos.values())).hexdigest()[:16]
    if not (out / "inference_pb2_grpc.py").is_file():
        STUB_DIR.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(dir=STUB_DIR))
        for name, text in protos.items():
            (work / "proto" / name).parent.mkdir(parents=True, exist_ok=True)
            (work / "proto" / name).write_bytes(text)
        include = Path(protoc.__file__).parent / "_proto"  # google/protobuf/*.proto, shipped with grpcio-tools
        status = protoc.main(["protoc", f"-I{work / 'proto'}", f"-I{include}", f"--python_out={work}",
                              f"--grpc_python_out={work}", *(str(work / "proto" / name) for name in PROTOS)])
        if status != 0:
            raise RuntimeError(f"protoc failed ({status}) on {torchserve_jar()}'s protos")
        try:
            work.rename(out)
        except OSError:  # another process got there first: its stubs are the same
            shutil.rmtree(work, ignore_errors=True)
    if str(out) not in sys.path:
        sys.path.append(str(out))  # after everything else: its module names are generic
    return importlib.import_module("inference_pb2"), importlib.import_module("inference_pb2_grpc")


def predict(address: str, model: str, inputs: Dict[str, bytes], key: str | None = None,
            timeout: float = 120) -> bytes:
    """One ``Predictions`` call: the handler's answer bytes. Raises grpc.RpcError on a refused call."""
    import grpc

    messages, services = stubs()
    metadata = (("authorization", f"Bearer {key}"),) if key else ()
    with grpc.insecure_channel(address) as channel:
        stub = services.InferenceAPIsServiceStub(channel)
        request = messages.PredictionsRequest(model_name=model, input=inputs)
        return stub.Predictions(request, metadata=metadata, timeout=timeout).prediction


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--image", type=Path, required=True)
    parser.add_argument("--address", default="127.0.0.1:7070", help="grpc_inference_port of config.properties")
    parser.add_argument("--key-file", type=Path, default=SERVE_DIR / "key_file.json")
    parser.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                        help="a request option, e.g. topk=3 (repeatable)")
    args = parser.parse_args()
    inputs = {"data": args.image.read_bytes()}
    for option in args.option:
        name, equals, value = option.partition("=")
        if not equals:
            parser.error(f"--option takes NAME=VALUE, not {option!r}")
        inputs[name] = value.encode()
    print(json.dumps(json.loads(predict(args.address, args.model, inputs, inference_key(args.key_file))), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
