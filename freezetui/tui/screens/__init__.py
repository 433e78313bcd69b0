"""Dialogs and the help screen, one per module."""
