"""``item serve``: an analyst's web page and JSON API over one store and its heads.

Roles: ``featurizer`` (the one seam to the featurize stage), ``service`` (what is loaded at
start-up and every answer, as plain dicts; no web framework), ``app`` (the FastAPI routes and the
static page), ``cli`` (the command). FastAPI and uvicorn come with the ``serve`` extra and are
imported only by ``app`` and ``cli``.
"""

from item.serve.service import ServeConfig, Service

__all__ = ["ServeConfig", "Service"]
