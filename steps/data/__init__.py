"""The raw table: its schema, its contract (table rules, drift), getting a verified copy."""
