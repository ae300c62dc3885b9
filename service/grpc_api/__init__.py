"""The Open Inference Protocol over gRPC: the protocol's ``.proto``, the modules grpcio-tools generates from it
(``generate``), and the server (``server``). Importing this package loads neither."""
