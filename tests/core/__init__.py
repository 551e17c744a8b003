"""The shared core: spec tables and layouts, guest memory and leases, wire frames, profiles, the JSON
record."""
