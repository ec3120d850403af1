"""predict's Spark engine (PySpark is imported lazily, so nothing else pays for it)."""
