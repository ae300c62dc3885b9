"""Generate the protocol's Python messages and service stubs from ``open_inference_grpc.proto`` with grpcio-tools.

The generated modules are committed beside the ``.proto`` rather than made at build time: the package then
installs and imports with no code generator (grpcio-tools is a development dependency only), editable
installs and the Docker image need no build hook, and ``tests/test_grpc.py`` regenerates them and fails when
they differ from the ``.proto`` or from what the pinned grpcio-tools writes. The ``.proto`` is laid out under
``clipwise/service/grpc_api/`` for protoc, so the stubs import the messages by their installed name.

Run ``python -m clipwise.service.grpc_api.generate`` after changing the ``.proto`` or the grpcio-tools pin.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTO = HERE / "open_inference_grpc.proto"
PACKAGE_PATH = Path("clipwise", "service", "grpc_api")  # where the installed modules live, as protoc sees it
GENERATED = ("open_inference_grpc_pb2.py", "open_inference_grpc_pb2.pyi", "open_inference_grpc_pb2_grpc.py")


def generate(into: Path) -> dict[str, bytes]:
    """Run protoc on the ``.proto`` in a scratch tree under ``into``; the generated files by name."""
    from grpc_tools import protoc  # a development dependency: only generating needs it

    source = into / "source"
    (source / PACKAGE_PATH).mkdir(parents=True)
    shutil.copyfile(PROTO, source / PACKAGE_PATH / PROTO.name)
    output = into / "output"
    output.mkdir()
    arguments = [f"--proto_path={source}", f"--python_out={output}", f"--pyi_out={output}"]
    arguments += [f"--grpc_python_out={output}", str(source / PACKAGE_PATH / PROTO.name)]
    status = protoc.main(["protoc", *arguments])
    if status != 0:
        raise RuntimeError(f"protoc failed with status {status} on {PROTO}")
    return {name: (output / PACKAGE_PATH / name).read_bytes() for name in GENERATED}


def main() -> None:
    """Write the generated modules beside the ``.proto``."""
    with tempfile.TemporaryDirectory() as scratch:
        for name, content in generate(Path(scratch)).items():
            (HERE / name).write_bytes(content)
            print(f"wrote {HERE / name}")


if __name__ == "__main__":
    main()
