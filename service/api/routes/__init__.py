"""Route modules: ``health`` (liveness, readiness), ``metrics`` (Prometheus), ``models`` (what is served),
``predict``, ``management`` (load, unload, versions; bearer token) and ``v2`` (the Open Inference Protocol)."""
