"""The WvdS crypto service task (issue 3): its pure, sans-I/O core.

Modules, one concept each:

- ``protocol``  wire format (request/response frames, codes, payload layouts)
- ``ratelimit`` token bucket with cooldown, injectable clock
- ``nonces``    encrypt nonce sequences (never repeat) and the decrypt replay window
- ``keys``      key objects, key types, usage policy, zeroization
- ``keystore``  key storage interface, memory and encrypted-file backends
- ``service``   ``CryptoService.handle(request) -> response``, never raises
- ``client``    the ``wvds_crypto.h`` helpers over an abstract ``transact`` callable

The protocol reference is ``docs/crypto_protocol.md``. Nothing here does I/O
except the file key store; the kernel IPC / shared-memory shell lives elsewhere.
"""
