"""MLflow bookkeeping: a step's run and its lifecycle, provenance (git, data version),
upstream runs and their outputs, registry state, loading registered models."""
