"""karma-trio: day-bucketed usage counters over TCP, wire- and file-compatible with karma 1.0."""

__version__ = "0.1.0"
