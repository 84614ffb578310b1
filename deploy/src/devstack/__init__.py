"""devstack: the native launcher. Runs one or more gateways (Postgres, migrations, the four
services, nginx) as plain processes when no Docker engine is available, and records every PID it
started in ``<state>/state.json`` so ``down`` stops exactly those and nothing else.
"""
