"""``spinelab serve``: trained models behind an HTTP API (FastAPI) with a browser page.

``jobs`` holds the job records and unpacks uploads safely, ``worker`` is the process that loads one model once and
predicts its jobs in order (through ``infer.batch.predict_dataset``, so results equal ``spinelab predict``'s),
``app`` is the FastAPI application and ``static/`` the page it serves at ``/``.
"""
