#!/usr/bin/python3
"""gen_stubs.py - build the quantd_client package: the hand-written modules plus the gRPC
stubs generated from proto/quantd.proto and proto/health.proto.

DESIGN
The stubs are never committed: they are generated from the .proto files at every build (by
CMake, by the tests, by setup.py), so they cannot drift from the wire contract. Two
generators are used on purpose. The message modules (*_pb2.py) come from the system protoc,
whose version matches the protobuf runtime that imports them; the service modules
(*_pb2_grpc.py) come from grpc_tools, whose bundled protoc is too old for the messages but
whose gRPC plugin output is version-independent. The service modules import their message
module by its bare name, which only works with the package directory on sys.path, so that
import is rewritten into a relative one.

Usage:
  gen_stubs.py --proto-dir DIR --out DIR [--protoc PATH] [--python PATH] [--stubs-only]

  --out DIR       the package is written to DIR/quantd_client/
  --stubs-only    generate the stubs only (the package sources are already in DIR)
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

PROTOS = ("quantd.proto", "health.proto")
SOURCES = ("__init__.py", "client.py", "bundle.py")
HERE = os.path.dirname(os.path.abspath(__file__))


def _run(cmd):
    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError("gen_stubs: %s failed (exit %d): %s"
                           % (" ".join(cmd), done.returncode, done.stdout.strip()))


def _relative_imports(path):
    # "import quantd_pb2 as quantd__pb2" -> "from . import quantd_pb2 as quantd__pb2"
    with open(path, encoding="utf-8") as f:
        text = f.read()
    text = re.sub(r"^import (\w+_pb2) as (\w+)$", r"from . import \1 as \2", text,
                  flags=re.MULTILINE)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def generate(proto_dir, out_dir, protoc="protoc", python=sys.executable, stubs_only=False):
    """Write the package to out_dir/quantd_client; returns that path."""
    for name in PROTOS:
        if not os.path.isfile(os.path.join(proto_dir, name)):
            raise RuntimeError("gen_stubs: %s: no %s there" % (proto_dir, name))
    pkg = os.path.join(out_dir, "quantd_client")
    os.makedirs(pkg, exist_ok=True)
    if not stubs_only:
        for name in SOURCES:
            shutil.copyfile(os.path.join(HERE, "quantd_client", name), os.path.join(pkg, name))
    # Generate into a scratch directory and move the results in, so that a failed run leaves
    # no half-written stubs next to good ones.
    with tempfile.TemporaryDirectory(prefix="quantd-stubs-") as tmp:
        protos = list(PROTOS)
        _run([protoc, "-I", proto_dir, "--python_out=" + tmp] + protos)
        _run([python, "-m", "grpc_tools.protoc", "-I", proto_dir, "--grpc_python_out=" + tmp]
             + protos)
        for name in PROTOS:
            base = name[:-len(".proto")]
            for suffix in ("_pb2.py", "_pb2_grpc.py"):
                src = os.path.join(tmp, base + suffix)
                if suffix == "_pb2_grpc.py":
                    _relative_imports(src)
                shutil.move(src, os.path.join(pkg, base + suffix))
    return pkg


def main():
    ap = argparse.ArgumentParser(description="Generate the quantd_client package.")
    ap.add_argument("--proto-dir", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--protoc", default="protoc")
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--stubs-only", action="store_true")
    a = ap.parse_args()
    try:
        generate(a.proto_dir, a.out, a.protoc, a.python, a.stubs_only)
    except (RuntimeError, OSError) as e:
        print(str(e), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
