"""The trio shell, the only package that imports trio: it moves bytes, runs tasks, owns time."""
