"""The Textual UI: a thin layer over freezetui.core."""
