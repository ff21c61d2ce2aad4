"""What every test suite shares, importable as ``support.<module>`` (pytest's ``pythonpath``
puts ``tests/`` on ``sys.path``).

* ``services``: the machine's PostgreSQL and Redis, moto's S3 credentials, free ports.
* ``processes``: the pipeline's processes (worker, bridge, beat) as subprocesses.
* ``live_api``: the registry API and the engine served over real HTTP.
* ``fuzz``: the schemathesis driver of the fuzz suites.
* ``tiny``: the tiny Llama base model, built on ``engine.tiny``.
"""
