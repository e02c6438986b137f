"""Wire formats, pure: one layout toolkit (``layout``) and the formats that are not one service's own.

A leaf package: it imports nothing of the project but ``capabilities`` and does no I/O. Modules:

- ``layout``    the byte-layout toolkit: a message class declares its fields once; encode,
                decode and the construction-time checks are derived from that table
- ``csrattrs``  the RFC 7030 §4.5.2 CsrAttrs DER codec (the EST client and the development CA)
"""
