"""Operator tools: `karma-trio` subcommands beside `serve`, one module each (karma/cli.py lists
them). None of them imports the server.
"""
