"""Evaluation: what is written during validation and test (``writers``, ``saving``), metrics and result pages."""
