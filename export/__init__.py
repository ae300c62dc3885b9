"""Export and runtimes: ONNX graphs of every family with the adaptive gating kept in the graph
(``export.onnx``, ``export.ops``), the ONNX Runtime backend beside the torch one (``export.runtime``),
frozen fusion strategies (``export.fusion``), TensorRT engines (``export.tensorrt``) and the Triton kernels
of AdaFuse's gated convolutions on CUDA (``export.triton_gating``).

Nothing here is imported by ``models``; ``service`` imports ``export.runtime`` only, which loads ONNX Runtime
when an ONNX Runtime runner is opened.
"""
