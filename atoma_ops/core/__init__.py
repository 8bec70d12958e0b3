"""The ground floor: what every layer may use and nothing of atoma_ops sits under (it imports only the standard
library).

- :mod:`.failpoints`: named step boundaries a test or the reliability harness can kill the process at;
- :mod:`.errors`: the retry taxonomy. An error says itself whether retrying can help (``error_class``), so the
  code that decides (the journal, the Prefect tasks' retry condition) never imports the layers that raise them;
- :mod:`.jsonable`: plain JSON values of what the package returns (dataclasses, bytes, numpy and pandas values).
"""
