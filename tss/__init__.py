"""Time Stamping Server: an RFC 3161 authority (sans-IO core in authority.py)."""
