"""Thin ctypes bindings and constants; nothing in this package decides anything."""
