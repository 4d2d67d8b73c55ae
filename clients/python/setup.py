"""setup.py - only the build hook of quantd-client (the metadata is in pyproject.toml): before
the package is copied into a build, its gRPC stubs are generated from the .proto files, which
are never committed, so an installed client always matches the proto it was built from."""
import os
import sys

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


class BuildWithStubs(build_py):
    def run(self):
        sys.path.insert(0, HERE)
        import gen_stubs
        proto = os.environ.get("QUANTD_PROTO_DIR",
                               os.path.join(HERE, os.pardir, os.pardir, "proto"))
        gen_stubs.generate(proto, HERE, os.environ.get("PROTOC", "protoc"), sys.executable,
                           stubs_only=True)
        super().run()


setup(cmdclass={"build_py": BuildWithStubs})
