"""The TCMS gateway: SMTP submission and IMAP proxies that run certified mail for any client.

Built on the sans-IO protocol core in ``tcms.protocol``; the proxies themselves are tracked in
the gateway issue."""
