"""Volumes and partner annotations on disk."""
