"""The Trusted Third Party service: recovery (R1S, R1R, R2S), disputes, signed affidavits.

Its decision logic is the sans-IO ``tcms.protocol.ttp``; its decisions are stored exactly once
by ``tcms.store``.  The HTTP service is tracked in the services issue."""
