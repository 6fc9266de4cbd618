"""One function per stage (``run_harvest``, ``run_train``, ``run_analyze`` ...): each loads what
the stage needs from the run directory, calls the library, and returns what it measured. The
command line (``cli.py``, ``features/cli.py``) and the web app call these and render the results;
these never print (progress bars and the logger aside) and never call each other's callers.

- ``common``: model and dictionary loading for a run, run checks, ``--force`` clearing
- ``pipeline``: harvest, train, evaluate, report
- ``scaling``: the scaling-law sweep and recommendations
- ``features``: analyze, feature cards, search, family, explain, catalog
- ``serve``: the feature browser (``monosemantic.web``) under uvicorn
"""
