"""Pure protocol rules of the Atoma contract ``atoma::db``: constants, abort codes, money math, epochs.

No I/O here; everything is tested as tables taken from atoma-protocol.md.
"""
