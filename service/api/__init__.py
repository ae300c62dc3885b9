"""HTTP routes, one module per area under ``routes``."""
