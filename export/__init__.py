"""Export and runtimes: ONNX graphs of every family with the adaptive gating kept in the graph
(``clipwise.export.onnx``, ``clipwise.export.ops``), the ONNX Runtime backend beside the torch one
(``clipwise.export.runtime``),
frozen fusion strategies (``clipwise.export.fusion``), TensorRT engines (``clipwise.export.tensorrt``) and the Triton
kernels
of AdaFuse's gated convolutions on CUDA (``clipwise.export.triton_gating``).

Nothing here is imported by ``models``; ``service`` imports ``clipwise.export.runtime`` only, which loads ONNX Runtime
when an ONNX Runtime backend is opened.
"""
