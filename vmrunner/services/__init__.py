"""Built-in services that GitHub's own actions talk to, unchanged: artifacts
(``actions/upload-artifact@v4``, ``actions/download-artifact@v4``) and caches
(``actions/cache@v4``).

A layer below the engine: ``tokens.py`` (runtime tokens, signed blob URLs), ``blobs.py``
(uploads as the Azure SDK sends them), ``artifacts.py`` and ``cache.py`` (the stores),
``app.py`` (the HTTP routes), ``host.py`` (serving on a unix socket, and a job's environment),
``settings.py`` (folders and limits).
"""
