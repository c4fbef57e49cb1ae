"""The sans-IO TCMS protocol core: message codec, checks and the three role machines.

Nothing in this package opens a socket, touches SQL or reads the clock; time is an input
and every output is an action for the caller to carry out."""
