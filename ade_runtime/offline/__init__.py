"""Offline work over judged trace datasets, no GPU needed: replay evaluation of the policies
(``evaluate``), and later the compute-quality curves and the paired statistics that go with it.

The CLIs (``ade-replay``) and the bench call this package; it never imports a CLI.
"""
