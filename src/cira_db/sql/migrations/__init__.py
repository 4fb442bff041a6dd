"""Schema migrations: ``NNNN_name.sql`` with a ``NNNN_name.down.sql`` beside each."""
