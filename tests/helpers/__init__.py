"""What several test modules share: generated data folders, fake builds, stage recipes.

Fixtures built on these live in the root ``conftest.py``; test modules import these
helpers from here, never from one another.
"""
