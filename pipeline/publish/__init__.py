"""Publishing a build: the report (``report.py``) and the deploy bundle (``bundle.py``).

Both render the build's :class:`pipeline.summary.BuildSummary` and the files it
saved; neither loads the data set nor runs a model.
"""
