"""Thin entry points that dvc.yaml calls: `python -m stages.<name>` from the project root."""
