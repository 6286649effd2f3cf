"""Entry points of the MURA pipeline (mura/dvc.yaml); they run from the project root."""
