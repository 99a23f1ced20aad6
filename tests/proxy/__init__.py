"""Proxy tests: real sockets on 127.0.0.0/8."""
