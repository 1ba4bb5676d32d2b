"""Sharding's pure rules, shared by the node, the Python client and the router.

Nothing here does I/O: the slot of a key, the shard map and its checks, and (in later modules)
how a request splits by group and how the parts' answers merge back.
"""
