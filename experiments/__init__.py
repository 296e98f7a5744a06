"""Research beside the product: recipe searches and probes (experiments/README.md).

This package imports the product (llava_platform, jobs); nothing in the product imports it
(tests/test_layout.py checks). Run its modules from the repository root: `python -m experiments.X`.
"""
