"""The Trusted Third Party service: recovery (R1S, R1R, R2S), disputes, signed affidavits.

Its shape, as every service's: ``api.py`` the FastAPI app, ``store.py`` its table's SQL
(decisions stored exactly once), and the sans-IO decision logic in ``tcms.protocol.ttp``
(``filing.py`` checks who may file a dispute)."""
