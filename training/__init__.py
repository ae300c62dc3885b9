"""Training: video-list datasets (``data``), each paper's objective (``train_classifier``, ``train_adafuse``,
``train_ada3d``, ``train_fusion``) on shared plumbing (``common``, options in ``config``), evaluation
(``evaluate``) and the synthetic motion benchmark (``synthetic``)."""
