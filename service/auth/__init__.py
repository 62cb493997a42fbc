"""API keys: the keys file (hashes only) and the server's live view of it."""

from service.auth.keys import (
    KEY_PREFIX,
    ApiKeyRecord,
    KeyFileError,
    KeyRing,
    create_key,
    hash_key,
    read_keys_file,
    revoke_key,
    write_keys_file,
)

__all__ = ["KEY_PREFIX", "ApiKeyRecord", "KeyFileError", "KeyRing", "create_key", "hash_key",
           "read_keys_file", "revoke_key", "write_keys_file"]
