"""gal-view: the representation in a browser: search by id or by click, a pannable map, filters on columns, and a
static export.

:class:`Catalogue` joins what the other tools wrote (embeddings, map, cutouts, FAISS index); :mod:`server` serves
it with Starlette and uvicorn (extra ``view``); :mod:`export` writes plain HTML pages; :mod:`filters` parses the
filter language without eval.
"""
