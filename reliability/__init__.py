"""The reliability harness (``make reliability``): crash injection, a bad-input table, concurrent load and security
checks, each proving that nothing is lost, nothing is paid twice and no key leaks. Each part writes its results to
``data/reliability/<part>.json`` and a markdown section to ``data/reliability/<part>.md``; ``reliability.report``
joins the sections into ``docs/reliability.md``.
"""
