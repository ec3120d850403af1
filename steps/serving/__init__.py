"""serve's library: the ASGI app, request rows and protocols, batching, alias following,
API keys, metrics and the HTTP wire protocol."""
