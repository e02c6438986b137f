"""The authority model, pure and I/O-free: rights, the mapping database, the image
schema, and static analysis of who can reach whom (and why)."""
