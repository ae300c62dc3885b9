"""KServe's own gRPC client (``kserve.inference_client.InferenceGRPCClient``) on one request, run as a script in
a process of its own: its generated messages and ``tritonclient.grpc``'s may not share one.

    python tests/kserve_grpc_client.py ADDRESS MODEL CLIPS.npy   →   one JSON line on stdout
"""

from __future__ import annotations

import asyncio
import json
import sys

import numpy as np
from kserve.inference_client import InferenceGRPCClient
from kserve.protocol.infer_type import InferInput, InferRequest


async def answer(address: str, model: str, clips_path: str) -> dict[str, object]:
    """Liveness, readiness and one inference with the clips of ``clips_path``, as KServe's client reads them."""
    clips = np.load(clips_path)
    client = InferenceGRPCClient(address, timeout=60, retries=0)
    tensor = InferInput("clips", list(clips.shape), "FP32")
    tensor.set_data_from_numpy(clips, binary_data=True)
    try:
        response = await client.infer(InferRequest(model, [tensor], request_id="kserve-1"))
        return {
            "live": await client.is_server_live(),
            "ready": await client.is_server_ready(),
            "model_ready": await client.is_model_ready(model),
            "id": response.id,
            "logits": response.get_output_by_name("logits").as_numpy().tolist(),
            "parameters": {name: str(value) for name, value in response.parameters.items()},
        }
    finally:
        await client.close()


if __name__ == "__main__":
    print(json.dumps(asyncio.run(answer(*sys.argv[1:]))))
