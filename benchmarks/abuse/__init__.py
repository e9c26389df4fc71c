"""The abuse suite (``python -m benchmarks.abuse``, ``make bench-abuse``): hostile input,
generated and seeded, through the real CLIs and the daemon's HTTP server.

Modules: ``gen`` (malformed models, image and YAML bombs, videos, signal times), ``flatbuf``
(where each value lies in a TFLite FlatBuffer, by the schema's field names), ``runs``
(subprocess runs and their outcomes), ``signals`` (SIGTERM at random moments),
``http_load`` (loopback HTTP load, also ``python -m benchmarks.abuse.http_load``) and
``__main__`` (the command line and its summary).
"""
