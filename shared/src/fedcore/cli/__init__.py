"""The ``mosaic`` command line: a thin client of the admin REST API (plus the one bootstrap
command that talks to the database directly, ``mosaic admin token create``).

Modules: ``main`` (parser + dispatch), ``client`` (where the API is and how to call it),
``output`` (tables and ``--json``), and one module per command group.
"""
