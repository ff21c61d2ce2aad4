"""The JSON shapes of the API, by concern: ``common`` (the strict request base, list envelope,
answer config), ``catalog`` (namespaces, base models, tokens), ``adapters`` (versions, files,
upload check), ``ops`` (fleet view, health, ingest records). Import each name from its module."""
