"""File formats as pure codecs (`*_codec`), and blocking file helpers (`*_files`) run in threads."""
