"""quantd_client - the Python client of quantd, the quantization daemon.

    from quantd_client import Client
    with Client("127.0.0.1:7433") as c:
        res = c.quantize("ckpt/", method="awq", format="awq", bits=4, group_size=128,
                         calib="calib.safetensors", output_dir="ckpt-awq")
        print(res.path, res.job.id, res.outcome)

What is here: Client (client.py: the calls and the upload / quantize / download flows),
QuantdError and JobFailedError (every failure, with its gRPC status code), build_spec (a
QuantSpec from keyword fields named as in the proto), bundle (manifests and digests, no gRPC
needed), and the generated stubs quantd_pb2 / quantd_pb2_grpc / health_pb2 /
health_pb2_grpc, which the build writes next to this file from proto/*.proto.
"""
from . import bundle
from . import health_pb2
from . import health_pb2_grpc
from . import quantd_pb2
from . import quantd_pb2_grpc
from .client import (STATE_NAME, Client, DownloadReport, JobFailedError, PutResult, QuantdError,
                     QuantizeResult, build_spec)

__version__ = "0.1.0"

__all__ = ["Client", "QuantdError", "JobFailedError", "PutResult", "QuantizeResult",
           "DownloadReport",
           "build_spec", "bundle", "quantd_pb2", "quantd_pb2_grpc", "health_pb2",
           "health_pb2_grpc", "STATE_NAME", "__version__"]
