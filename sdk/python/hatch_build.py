"""Generates the gRPC stubs from the protos when the wheel is built.

The protos are the repository's (`proto/`, two levels up) or, in an sdist,
the copy it carries (`proto/`). grpcio-tools bundles protoc, so no system
protoc is used, and nothing generated is checked in: the modules land in
the wheel as `policyhub.v1`, the protos' own package.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

PROTOS = ("policyhub/v1/types.proto", "policyhub/v1/bundle_service.proto")


def proto_root(here: Path) -> Path:
    for candidate in (here / "proto", here.parent.parent / "proto"):
        if (candidate / PROTOS[0]).is_file():
            return candidate
    raise RuntimeError(f"no protos under {here}/proto or {here.parent.parent}/proto")


class ProtoStubs(BuildHookInterface):  # type: ignore[type-arg]
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        import grpc_tools
        from grpc_tools import protoc

        root = proto_root(Path(self.root))
        out = Path(tempfile.mkdtemp(prefix="policyhub-stubs-"))
        bundled = Path(grpc_tools.__file__).parent / "_proto"
        arguments = [
            "grpc_tools.protoc",
            f"-I{root}",
            f"-I{bundled}",
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
            *PROTOS,
        ]
        if protoc.main(arguments) != 0:
            raise RuntimeError("protoc failed on " + " ".join(PROTOS))
        generated = out / "policyhub" / "v1"
        (generated / "__init__.py").write_text(
            '"""The generated `policyhub.v1` messages and stubs."""\n'
        )
        for path in sorted(generated.iterdir()):
            build_data["force_include"][str(path)] = f"policyhub/v1/{path.name}"
