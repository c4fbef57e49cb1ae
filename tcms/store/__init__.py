"""Protocol state in SQL: SQLite by default, PostgreSQL for an organisation."""

from tcms.store.db import ConcurrentUpdate, OutMessage, RunRecord, Store

__all__ = ["ConcurrentUpdate", "OutMessage", "RunRecord", "Store"]
