"""Processes and tools around the steps: errors, signals and process ids, the fork server, the
interpreter start hook, the empty store template, the authenticated server and accounts."""
