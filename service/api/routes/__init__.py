"""Route modules: ``health`` (liveness, readiness), ``models`` (what is served), ``predict``."""
