"""Tests of adapters/server: the server customisations, and the third-party internals the
gateway relies on, checked against the installed releases."""
