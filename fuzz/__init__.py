"""Fuzzing: targets (``targets.py``), the atheris runner (``run.py``), seed corpus (``corpus/``)."""
