"""Protocol state in SQL: SQLite by default, PostgreSQL for an organisation.

What the core keeps, shared by the gateway and the services: runs, the outbox, the audit
chain, the one Alembic chain of migrations (``db.py``, ``records.py``, ``audit.py``,
``engine.py``, ``models.py``, ``migrations/``).  Each service keeps its own SQL in its
package (``dc/store.py``, ``ttp/store.py``, ``tss/``) on this ``Store``."""

from tcms.store.db import Store
from tcms.store.records import ConcurrentUpdate, OutMessage, RunRecord, StoredMessage

__all__ = ["ConcurrentUpdate", "OutMessage", "RunRecord", "Store", "StoredMessage"]
