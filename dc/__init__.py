"""The Distribution Center: users' and gateways' public keys, and signed security-module updates.

Its shape, as every service's: ``api.py`` the FastAPI app, ``store.py`` its tables' SQL,
``records.py`` the sans-IO signed requests and answers; ``client.py`` is how a gateway asks
it, ``updates.py`` / ``updater.py`` the TUF repository and its client."""
