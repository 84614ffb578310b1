"""fedcore: the common library every Mosaic federation service shares.

It owns settings, the database engine and models, the only Alembic migrations, the X.509/OID
codec, CSR checks, key sealing, the scope evaluator, the audit writer, the error envelope and the
``mosaic`` CLI. It never imports anything from ``services/``.
"""
