"""The Distribution Center: users' and gateways' public keys, and signed security-module updates.

The HTTP service is tracked in the services issue."""
