"""Processes and tools around the steps: errors, signals and process ids, the fork server, the
interpreter refusal hook, the empty store template, the authenticated server and accounts."""
