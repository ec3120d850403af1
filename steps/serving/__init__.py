"""serve's library: the ASGI app, request rows and protocols, batching, alias following,
API keys, metrics, the inference log and the HTTP wire protocol."""
