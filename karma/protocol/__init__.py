"""The sans-I/O wire layer: bytes in, requests out; results in, bytes out. No sockets here."""
